#!/usr/bin/env python3
"""The ASR fleet: one Nginx port in front of Gunicorn workers under supervisord.

    fleet.py [--config fleet.toml] [--run-dir run] COMMAND

render          render run/ from the fleet file (nothing started)
serve           install what is missing, render, start, wait healthy, print how to try it
stop | restart  stop the whole fleet | stop then serve
status          supervisorctl status plus every instance's health
reload          apply an edited fleet file: rolling restarts, no dropped requests
scale N         grow or shrink the active instances (drains before stopping)
logs            the last lines of every log (and follow them on a terminal)
verify          the deployment checklist; nonzero exit when something failed
install-system  render for /etc/nginx/conf.d and /etc/supervisor/conf.d
poll            the health poller loop (scripts/health_poller.sh runs it)

FLEET_CONFIG and FLEET_RUN_DIR replace the defaults, so `make` targets can
drive a fleet other than the repository's.
"""

from __future__ import annotations

import argparse
import collections
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fleet_config as fc  # noqa: E402
import fleet_ops as ops  # noqa: E402

REPO = fc.REPO
SHARED_AUDIO = REPO.parent / "shared" / "audio"


def _fresh_state(resolved: dict) -> dict:
    return {"size": resolved["initial_instances"], "ejected": {}, "maintenance": [], "last_scale_at": 0.0}


def cmd_render(args) -> int:
    resolved = fc.load(args.config, args.run_dir)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    state = fc.read_state(args.run_dir, resolved)
    for path in fc.render_all(resolved, state):
        print(path)
    if not (args.run_dir / "state.json").exists():
        fc.write_state(args.run_dir, state)
    return 0


def _ensure_system_packages() -> None:
    missing = [tool for tool in ("nginx", "ffmpeg")
               if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        print(f"fleet: {', '.join(missing)} missing; running scripts/setup.sh --system", flush=True)
        subprocess.run([str(REPO / "scripts" / "setup.sh"), "--system"], check=True)


def _prefetch(resolved: dict) -> None:
    """Fetches a FunASR model once, before the workers start (never once per
    worker); a no-op for a local directory or a cached model."""
    if resolved["engine"] == "pocketsphinx":
        return
    sys.path.insert(0, str(REPO))
    try:
        from app.engines import funasr_engine
    except ImportError as error:
        print(f"fleet: no FunASR support ({error}); workers decide on their own", file=sys.stderr)
        return
    model, cache = resolved["model"], resolved["model_cache"] or None
    available, reason = funasr_engine.model_is_available(model, cache)
    if available:
        print(f"fleet: model {model}: {reason}", flush=True)
        print(f"fleet: model ready at {funasr_engine.prefetch(model, cache)}", flush=True)
    elif resolved["engine"] == "funasr":
        raise fc.FleetError(f"engine = \"funasr\" but {reason}; use engine = \"auto\" or \"pocketsphinx\"")
    else:
        print(f"fleet: {reason}: engine auto will serve the embedded pocketsphinx engine", file=sys.stderr)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _front_get(resolved: dict, path: str, timeout: float = 5):
    import requests
    return requests.get(fc.front_url(resolved) + path, timeout=timeout)


def cmd_serve(args) -> int:
    if not args.no_setup:
        _ensure_system_packages()
    resolved = fc.load(args.config, args.run_dir)
    sup = ops.Supervisor(resolved)
    if sup.running():
        print("fleet: already running (make status; make reload applies fleet file edits)")
        return cmd_status(args)
    _prefetch(resolved)
    run_dir = args.run_dir.resolve()
    for stale in ("supervisor.sock", "supervisord.pid", "nginx.pid"):
        (run_dir / stale).unlink(missing_ok=True)
    busy = [str(p) for p in [resolved["front_port"]] + [i["port"] for i in resolved["instances"]]
            if not _port_free("127.0.0.1", p)]
    if busy:
        raise fc.FleetError(f"port(s) {', '.join(busy)} already in use (another fleet? make stop)")
    state = _fresh_state(resolved)
    run_dir.mkdir(parents=True, exist_ok=True)
    fc.render_all(resolved, state)
    fc.write_state(run_dir, state)
    test = subprocess.run(resolved["nginx_cmd"] + ["-t", "-q"], capture_output=True, text=True)
    if test.returncode:
        raise fc.FleetError(f"nginx -t failed: {test.stderr.strip()}")
    subprocess.run([f"{resolved['bin_dir']}/supervisord", "-c", resolved["supervisor_conf"]], check=True)
    deadline = time.monotonic() + 20
    while not sup.running():
        if time.monotonic() > deadline:
            raise fc.FleetError(f"supervisord did not start:\n{_tail(run_dir / 'logs' / 'supervisord.log')}")
        time.sleep(0.2)
    active = resolved["instances"][:state["size"]]
    print(f"fleet: started supervisord; loading {len(active)} instance(s) ...", flush=True)
    failed = ops.wait_healthy(resolved, active, args.timeout or resolved["health"]["max_load_s"], sup,
                              progress=True)
    if failed:
        for name in failed:
            print(f"--- {name} ({sup.state(name)}): {run_dir}/logs/{name}.log\n"
                  f"{_tail(run_dir / 'logs' / f'{name}.log')}", file=sys.stderr)
        print(f"fleet: {', '.join(failed)} not healthy; the rest keeps running (make stop)", file=sys.stderr)
        return 1
    health = {}
    for _ in range(50):
        try:
            response = _front_get(resolved, "/health")
            if response.ok and (run_dir / "fleet-status.json").exists():
                health = response.json()
                break
        except OSError:
            pass
        time.sleep(0.2)
    if not health:
        print(f"fleet: Nginx is not answering:\n{_tail(run_dir / 'logs' / 'nginx-error.log')}",
              file=sys.stderr)
        return 1
    front = fc.front_url(resolved)
    audio = os.path.relpath(SHARED_AUDIO / "jfk.flac") if (SHARED_AUDIO / "jfk.flac").exists() else "FILE"
    print(f"\nASR fleet up: {len(active)} instance(s) behind {front}\n"
          f"  model:  {health.get('model')} (engine {health.get('engine')}, {health.get('device')})")
    if resolved["engine"] == "auto" and health.get("engine") == "pocketsphinx":
        print(f"  note:   {resolved['model']} was not available; auto serves the embedded engine")
    print(f"  try:    curl -F file=@{audio} {front}/asr\n"
          f"  watch:  make status | make monitor | curl {front}/fleet\n  stop:   make stop")
    return 0


def cmd_stop(args) -> int:
    if not (args.run_dir / "fleet.json").exists():
        print("fleet: not running (never started here)")
        return 0
    resolved = fc.read_resolved(args.run_dir)
    sup = ops.Supervisor(resolved)
    if not sup.running():
        print("fleet: not running")
        return 0
    pid = int((args.run_dir / "supervisord.pid").read_text())
    sup.rpc.shutdown()
    deadline = time.monotonic() + resolved["worker"]["stopwaitsecs"] * 2 + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("fleet: stopped")
            return 0
        time.sleep(0.2)
    print(f"fleet: supervisord (pid {pid}) still running", file=sys.stderr)
    return 1


def cmd_restart(args) -> int:
    if (args.run_dir / "fleet.json").exists():
        cmd_stop(args)
    return cmd_serve(args)


def _ctl(resolved: dict, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run([f"{resolved['bin_dir']}/supervisorctl", "-c", resolved["supervisor_conf"], *words],
                          capture_output=True, text=True)


def cmd_status(args) -> int:
    resolved = fc.read_resolved(args.run_dir) if (args.run_dir / "fleet.json").exists() else None
    if resolved is None or not ops.Supervisor(resolved).running():
        print("fleet: not running (make serve)")
        return 3
    print(_ctl(resolved, "status").stdout.rstrip())
    state = fc.read_state(args.run_dir, resolved)
    results = ops.probe_all(resolved["instances"], 2)
    print(f"\n{'instance':<12}{'port':>6} {'device':<7}{'weight':>6}  {'role':<8}{'health':<9}"
          f"{'queue':>6}{'in_flight':>10}  model")
    unhealthy = 0
    for index, inst in enumerate(resolved["instances"]):
        outcome, body, error = results[inst["name"]]
        active = index < state["size"]
        role = ("ejected" if inst["name"] in state["ejected"] else "active") if active else "spare"
        unhealthy += active and outcome != "ok"
        outcome = outcome if active or outcome == "ok" else "-"
        body = body or {}
        print(f"{inst['name']:<12}{inst['port']:>6} {inst['device']:<7}{inst['weight']:>6}  {role:<8}"
              f"{outcome:<9}{body.get('queue_depth', '-'):>6}{body.get('in_flight', '-'):>10}  "
              f"{body.get('model') or error}")
    print(f"\nfront: http://{resolved['front_host']}:{resolved['front_port']}  balancing: "
          f"{resolved['balancing']}  active {state['size']} (min {resolved['min_instances']}, "
          f"max {resolved['max_instances']})")
    return 1 if unhealthy else 0


def cmd_reload(args) -> int:
    old = fc.read_resolved(args.run_dir)
    new = fc.load(args.config, args.run_dir)
    if not ops.Supervisor(new).running():
        fc.render_all(new, fc.read_state(args.run_dir, new))
        print("fleet: not running; rendered only (make serve)")
        return 0
    ops.rolling_reload(old, new)
    print("fleet: reloaded")
    return 0


def cmd_scale(args) -> int:
    ops.scale_to(fc.read_resolved(args.run_dir), args.size)
    print(f"fleet: {args.size} active instance(s)")
    return 0


def cmd_logs(args) -> int:
    logs = sorted((args.run_dir / "logs").glob("*.log"))
    if not logs:
        print("fleet: no logs yet")
        return 0
    follow = args.follow if args.follow is not None else sys.stdout.isatty()
    if follow:
        os.execvp("tail", ["tail", "-n", str(args.lines), "-F", *map(str, logs)])
    for path in logs:
        print(f"==> {path} <==\n{_tail(path, args.lines)}\n")
    return 0


def cmd_verify(args) -> int:
    """The deployment checklist of the original system, one line per check."""
    import psutil
    import requests
    resolved = fc.read_resolved(args.run_dir)
    sup = ops.Supervisor(resolved)
    failures = []

    def check(ok: bool, what: str, detail: str = "") -> bool:
        print(f"[{'ok' if ok else 'FAIL'}] {what}{(': ' + detail) if detail else ''}")
        if not ok:
            failures.append(what)
        return ok

    if not check(sup.running(), "supervisord running", resolved["supervisor_url"]):
        return 1
    state = fc.read_state(args.run_dir, resolved)
    active = resolved["instances"][:state["size"]]
    states = {n: i["statename"] for n, i in sup.states().items()}
    programs = [i["name"] for i in active] + ["health-poller"]
    programs += ["nginx"] if resolved["mode"] == "local" else []
    healthy = {n for n, (outcome, _, _) in ops.probe_all(active, 5).items() if outcome == "ok"}
    for name in programs:
        # STARTING and healthy: the model loaded faster than startsecs.
        up = states.get(name) == "RUNNING" or (states.get(name) == "STARTING" and name in healthy)
        check(up, f"process {name} running", states.get(name, "missing"))
    listeners = collections.defaultdict(set)
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN:
            listeners[conn.laddr.port].add(conn.laddr.ip)
    for inst in active:
        ips = listeners.get(inst["port"], set())
        check(bool(ips) and ips <= {"127.0.0.1", "::1"}, f"port {inst['port']} listening on loopback only",
              ", ".join(sorted(ips)) or "not listening")
    check(resolved["front_port"] in listeners, f"front port {resolved['front_port']} listening",
          ", ".join(sorted(listeners.get(resolved["front_port"], []))))
    results = ops.probe_all(active, 5)
    for inst in active:
        outcome, _, error = results[inst["name"]]
        check(outcome == "ok", f"{inst['name']} /health green", error)
    members = [m for m in fc.upstream_members(resolved, state) if not m["down"]]
    seen = collections.Counter()
    try:
        for _ in range(2 * sum(m["weight"] for m in members)):
            seen[_front_get(resolved, "/health").headers.get("X-ASR-Worker")] += 1
        missing = [m["name"] for m in members if not seen[m["name"]]]
        check(not missing, "balancer spreads requests over every instance",
              ", ".join(f"{k}={v}" for k, v in sorted(seen.items(), key=str)) +
              (f"; never reached {', '.join(missing)}" if missing else ""))
        check(_front_get(resolved, "/fleet").ok, "fleet status served at /fleet")
    except OSError as error:
        check(False, "balancer reachable", str(error))
    audio = Path(args.audio) if args.audio else SHARED_AUDIO / "jfk.flac"
    if check(audio.exists(), "test recording present", str(audio)):
        try:
            with audio.open("rb") as handle:
                response = requests.post(fc.front_url(resolved) + "/asr", files={"file": handle},
                                         timeout=resolved["worker"]["request_timeout_s"])
            json_body = response.headers.get("Content-Type", "").startswith("application/json")
            body = response.json() if json_body else {}
            worker, text = response.headers.get("X-ASR-Worker"), body.get("text", "")
            check(response.ok and body.get("code") == 0 and bool(text.strip()),
                  "a real recording transcribed", f"{response.status_code} by {worker}: {text[:60]!r}")
        except (OSError, ValueError) as error:
            check(False, "a real recording transcribed", str(error))
    print(f"\nverify: {'all checks passed' if not failures else 'FAILED: ' + '; '.join(failures)}")
    return 1 if failures else 0


def cmd_install_system(args) -> int:
    """Renders the fleet for the system's Nginx and Supervisor under --target."""
    target = Path(args.target).resolve()
    run_dir = Path("/var/lib/asr-fleet")
    resolved = fc.load(args.config, run_dir, mode="system")
    resolved["log_dir"] = "/var/log/asr-fleet"
    resolved["monitor"]["log_dir"] = "/var/log/asr-fleet/monitor"
    resolved["user"] = args.user
    state = _fresh_state(resolved)
    files = {
        "etc/nginx/conf.d/asr-fleet.conf": fc.render_text("nginx/asr-fleet.conf.j2", resolved, state),
        "etc/supervisor/conf.d/asr-fleet.conf":
            fc.render_text("supervisor/programs.conf.j2", resolved, state),
        "var/lib/asr-fleet/upstream.conf": fc.render_text("nginx/upstream.conf.j2", resolved, state),
        "var/lib/asr-fleet/fleet.json": json.dumps(resolved, indent=1) + "\n",
        "var/lib/asr-fleet/state.json": json.dumps(state, indent=1) + "\n",
    }
    (target / "var/log/asr-fleet").mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        fc.write_atomic(path, text)
        print(f"wrote {path}")
    steps = [["nginx", "-t"], ["nginx", "-s", "reload"],
             ["supervisorctl", "reread"], ["supervisorctl", "update"]]
    if args.apply and target == Path("/"):
        for step in steps:
            subprocess.run(step, check=True)
        print("install-system: applied")
    else:
        print("install-system: rendered; apply as root with:\n  " + " && ".join(" ".join(s) for s in steps))
    return 0


def cmd_poll(args) -> int:
    ops.poll(args.run_dir.resolve(), once=args.once)
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path,
                        default=Path(os.environ.get("FLEET_CONFIG", REPO / "fleet.toml")))
    parser.add_argument("--run-dir", type=Path, default=Path(os.environ.get("FLEET_RUN_DIR", REPO / "run")))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("render")
    serve = sub.add_parser("serve")
    restart = sub.add_parser("restart")
    for p in (serve, restart):
        p.add_argument("--timeout", type=float, default=0, help="seconds to wait for health")
        p.add_argument("--no-setup", action="store_true", help="never run scripts/setup.sh --system")
    for name in ("stop", "status", "reload"):
        sub.add_parser(name)
    sub.add_parser("scale").add_argument("size", type=int)
    logs = sub.add_parser("logs")
    logs.add_argument("-n", "--lines", type=int, default=30)
    logs.add_argument("--follow", action=argparse.BooleanOptionalAction, default=None)
    sub.add_parser("verify").add_argument("--audio", help="recording to transcribe (default jfk.flac)")
    install = sub.add_parser("install-system")
    install.add_argument("--target", default="/", help="root to write under (default /)")
    install.add_argument("--user", default=os.environ.get("SUDO_USER") or getpass.getuser(),
                         help="user the workers run as")
    install.add_argument("--apply", action="store_true", help="with --target /: reload nginx and supervisor")
    sub.add_parser("poll").add_argument("--once", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    handler = globals()[f"cmd_{args.command.replace('-', '_')}"]
    try:
        return handler(args)
    except fc.FleetError as error:
        print(f"fleet: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
