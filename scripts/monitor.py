#!/usr/bin/env python3
"""The fleet monitor (scripts/monitor.sh runs it).

    monitor.py [--run-dir run] [--watch [--interval S]] [--json] [--log-dir DIR] [--check]

One table per snapshot: every instance's port, device, Supervisor state,
health, queue, requests, errors, p95 latency and real-time factor (from its
/health and /stats), GPUs from nvidia-smi when present, host load and memory,
fleet totals. --json appends each snapshot as a JSON line under the log
folder. Alerts (an active instance down, any instance FATAL in Supervisor,
error rate or p95 over the fleet file's thresholds) are printed and appended to
<run>/logs/alerts.log; with --check the exit status is 1 while one is raised.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

# Run as a script, so this folder is on sys.path: the fleet package is found.
from fleet import config as fc
from fleet import state as fs
from fleet.supervisor import Supervisor

# Requests an instance must have served before its error rate can alert.
MIN_REQUESTS_FOR_RATE = 20


def _get_json(port: int, path: str, timeout: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return json.loads(error.read())
        except (ValueError, OSError):
            return None
    except (OSError, ValueError):
        return None


def gpus() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    query = "index,name,utilization.gpu,memory.used,memory.total"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            rows.append({"index": parts[0], "name": parts[1], "util_pct": parts[2],
                         "mem_used_mib": parts[3], "mem_total_mib": parts[4]})
    return rows


def snapshot(run_dir: Path) -> dict:
    """Everything the table shows, as one JSON-able dict."""
    resolved = fc.read_resolved(run_dir)
    state = fs.read_state(run_dir, resolved)
    sup = Supervisor(resolved)
    try:
        sup_states = {n: i["statename"] for n, i in sup.states().items()}
        running = True
    except Exception:  # supervisord down: show the fleet as such
        sup_states, running = {}, False
    pool = resolved["instances"]
    with concurrent.futures.ThreadPoolExecutor(2 * len(pool)) as executor:
        health = list(executor.map(lambda i: _get_json(i["port"], "/health"), pool))
        stats = list(executor.map(lambda i: _get_json(i["port"], "/stats"), pool))
    instances = []
    for index, (inst, h, s) in enumerate(zip(pool, health, stats)):
        h, s = h or {}, s or {}
        active = index < state["size"]
        instances.append({
            "name": inst["name"], "port": inst["port"], "device": inst["device"], "weight": inst["weight"],
            "role": ("ejected" if inst["name"] in state["ejected"] else "active") if active else "spare",
            "supervisor": sup_states.get(inst["name"], "-"),
            "health": h.get("status", "down" if active else "-"),
            "queue_depth": h.get("queue_depth"), "in_flight": h.get("in_flight"),
            "requests": s.get("total_requests"), "errors": s.get("failed_requests"),
            "p95_ms": (s.get("latency_ms") or {}).get("p95"), "rtf": s.get("real_time_factor"),
            "model": h.get("model"),
        })
    memory = psutil.virtual_memory()
    active = [i for i in instances if i["role"] != "spare"]
    requests = sum(i["requests"] or 0 for i in instances)
    errors = sum(i["errors"] or 0 for i in instances)
    p95s = [i["p95_ms"] for i in active if i["p95_ms"] is not None]
    return {
        "time": fs.now_iso(), "supervisord": running,
        "front": f"http://{resolved['front_host']}:{resolved['front_port']}", "instances": instances,
        "gpus": gpus(),
        "host": {"load": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                 "mem_used_gib": round((memory.total - memory.available) / 2**30, 1),
                 "mem_total_gib": round(memory.total / 2**30, 1)},
        "totals": {"active": len(active), "healthy": sum(i["health"] == "ok" for i in active),
                   "requests": requests, "errors": errors,
                   "error_rate": round(errors / requests, 4) if requests else 0.0,
                   "in_flight": sum(i["in_flight"] or 0 for i in active),
                   "queue_depth": sum(i["queue_depth"] or 0 for i in active),
                   "max_p95_ms": max(p95s) if p95s else None},
        "thresholds": {"p95_alert_ms": resolved["monitor"]["p95_alert_ms"],
                       "error_rate_alert": resolved["monitor"]["error_rate_alert"]},
    }


def alerts(snap: dict) -> list[str]:
    limits = snap["thresholds"]
    out = [] if snap["supervisord"] else ["supervisord is not running: the fleet is down"]
    for inst in snap["instances"]:
        if inst["supervisor"] == "FATAL":
            # Active or spare: an instance Supervisor gave up on cannot serve or scale.
            out.append(f"{inst['name']} is FATAL in Supervisor: it cannot start "
                       f"(see logs/{inst['name']}.log)")
            continue
        if inst["role"] == "spare":
            continue
        if inst["health"] != "ok":
            out.append(f"{inst['name']} is {inst['health']} (supervisor {inst['supervisor']})")
        if inst["p95_ms"] is not None and inst["p95_ms"] > limits["p95_alert_ms"]:
            out.append(f"{inst['name']} p95 {inst['p95_ms']:.0f} ms > {limits['p95_alert_ms']} ms")
        if (inst["requests"] or 0) >= MIN_REQUESTS_FOR_RATE and \
                (inst["errors"] or 0) / inst["requests"] > limits["error_rate_alert"]:
            out.append(f"{inst['name']} error rate {inst['errors'] / inst['requests']:.1%} "
                       f"> {limits['error_rate_alert']:.1%}")
    return out


def _cell(value, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def table(snap: dict) -> str:
    lines = [f"ASR fleet at {snap['front']}   {snap['time']}", ""]
    header = (f"{'instance':<11}{'port':>6} {'dev':<4}{'w':>2} {'role':<8}{'supervisor':<11}{'health':<8}"
              f"{'queue':>6}{'infl':>5}{'reqs':>7}{'errs':>6}{'p95 ms':>8}{'RTF':>7}")
    lines.append(header)
    for i in snap["instances"]:
        lines.append(f"{i['name']:<11}{i['port']:>6} {i['device']:<4}{i['weight']:>2} {i['role']:<8}"
                     f"{i['supervisor']:<11}{i['health']:<8}{_cell(i['queue_depth']):>6}"
                     f"{_cell(i['in_flight']):>5}{_cell(i['requests']):>7}{_cell(i['errors']):>6}"
                     f"{_cell(i['p95_ms'], '{:.0f}'):>8}{_cell(i['rtf'], '{:.3f}'):>7}")
    t = snap["totals"]
    lines.append(f"{'total':<11}{'':>6} {'':<4}{'':>2} {t['healthy']}/{t['active']} ok{'':<14}"
                 f"{t['queue_depth']:>6}{t['in_flight']:>5}{t['requests']:>7}{t['errors']:>6}"
                 f"{_cell(t['max_p95_ms'], '{:.0f}'):>8}")
    lines.append("")
    for g in snap["gpus"]:
        lines.append(f"GPU {g['index']} {g['name']}: {g['util_pct']}% busy, "
                     f"{g['mem_used_mib']}/{g['mem_total_mib']} MiB")
    host = snap["host"]
    lines.append(f"host: load {' '.join(map(str, host['load']))} on {host['cpus']} CPUs, "
                 f"memory {host['mem_used_gib']}/{host['mem_total_gib']} GiB, "
                 f"error rate {t['error_rate']:.2%}")
    for alert in snap.get("alerts", []):
        lines.append(f"ALERT: {alert}")
    return "\n".join(lines)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(line + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path,
                        default=Path(os.environ.get("FLEET_RUN_DIR", fc.REPO / "run")))
    parser.add_argument("--watch", action="store_true", help="redraw until Ctrl-C")
    parser.add_argument("--interval", type=float,
                        help="seconds between snapshots (default monitor.interval_s)")
    parser.add_argument("--json", action="store_true", help="append each snapshot to the log folder")
    parser.add_argument("--log-dir", type=Path, help="where --json writes (default monitor.log_dir)")
    parser.add_argument("--count", type=int, default=0, help="with --watch: stop after this many")
    # A person glancing at the table wants exit 0 under a good report; a
    # script asks for the verdict.
    parser.add_argument("--check", action="store_true", help="exit 1 when an alert is raised (for scripts)")
    args = parser.parse_args(argv)
    try:
        resolved = fc.read_resolved(args.run_dir)
    except fc.FleetError as error:
        print(f"monitor: {error}", file=sys.stderr)
        return 2
    interval = args.interval or resolved["monitor"]["interval_s"]
    log_dir = args.log_dir or Path(resolved["monitor"]["log_dir"])
    alert_log = Path(resolved["log_dir"]) / "alerts.log"
    raised: set[str] = set()
    shown = 0
    try:
        while True:
            snap = snapshot(args.run_dir)
            snap["alerts"] = alerts(snap)
            # One-shot: log every alert; --watch: log each when raised and cleared.
            new = set(snap["alerts"]) if not args.watch else set(snap["alerts"]) - raised
            for alert in sorted(new):
                _append(alert_log, f"{snap['time']} ALERT {alert}")
            for alert in sorted(raised - set(snap["alerts"])):
                _append(alert_log, f"{snap['time']} cleared {alert}")
            raised = set(snap["alerts"])
            if args.json:
                _append(log_dir / f"snapshots-{snap['time'][:10]}.jsonl", json.dumps(snap))
            if args.watch and sys.stdout.isatty():
                print("\033[H\033[2J", end="")
            print(table(snap), flush=True)
            shown += 1
            if not args.watch or (args.count and shown >= args.count):
                return 1 if args.check and snap["alerts"] else 0
            print()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
