"""The load test's report: suggestions from the figures, the text, the files and the PNG.

Works on `stats.summarize()`'s dict (and the LoadResult for the CSV), so
benchmarks can reuse any piece. Nothing here sends a request.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

# Thresholds the suggestions use, named so a reader can argue with them.
TAIL_RATIO = 3.0  # p95 / p50 above this is a long tail
UNEVEN_SHARE = 1.5  # busiest / idlest instance share above this is uneven
CPU_BUSY = 85.0  # average system CPU percent
CPU_IDLE = 50.0
CLIENT_CPU_HEAVY = 25.0  # the load generator's own share of the machine
MEMORY_FULL = 90.0
GPU_IDLE = 30.0


def suggestions(s: dict) -> list[str]:
    """Plain advice drawn from the figures; the first ones matter most."""
    out = []
    req, errors, lat = s["requests"], s["errors"], s["latency_ms"]
    sent = req["sent"] or 1
    res, instances = s["resources"], s["instances"]

    def share(kind: str) -> float:
        return errors.get(kind, 0) / sent

    if req["sent"] and not req["ok"] and errors.get("connection") == req["sent"]:
        out.append(f"Nothing answered at {s['target']}: is the fleet running? (`make status`, `make serve`)")
    elif share("connection"):
        out.append(f"{share('connection'):.0%} of requests could not connect: an instance or Nginx went away "
                   "or refused connections; check `make status` and `make logs`.")
    cpu, client = res["cpu_percent"], res["client_cpu_percent"]
    cpu_busy = bool(cpu and cpu["avg"] >= CPU_BUSY)
    if share("http_503"):
        fix = ("the CPU is already saturated, so add a machine or a GPU rather than instances here, or raise "
               "ASR_QUEUE_MAX_ITEMS so requests wait instead of failing" if cpu_busy else
               "add instances (`make scale N=...`) or raise ASR_QUEUE_MAX_ITEMS")
        out.append(f"{share('http_503'):.0%} answered 503 (queue full or no instance ready): {fix}; "
                   "lower --concurrency to find the load the fleet holds.")
    if share("http_502") or share("http_504"):
        out.append("502/504 from Nginx: an upstream died or answered too slowly; check `make logs` and "
                   "Nginx's proxy_read_timeout against the longest recording.")
    if share("timeout"):
        out.append(f"{share('timeout'):.0%} timed out after {s['config']['timeout']:g} s: the fleet is "
                   "saturated at this concurrency, or --timeout is short for the longest file.")
    client_errors = {k: v for k, v in errors.items() if k.startswith("http_4")}
    if client_errors:
        kinds = ", ".join(f"{k[5:]} x{v}" for k, v in client_errors.items())
        out.append(f"The server rejected requests ({kinds}): check --files, --lang and --endpoint; the "
                   "report's error_samples show what it said.")
    other = sum(v for k, v in errors.items()
                if k.startswith("http_5") and k not in ("http_502", "http_503", "http_504"))
    if other or errors.get("bad_response") or errors.get("other"):
        out.append("Server errors or malformed answers: check the worker logs (`make logs`) for the "
                   "request IDs (X-Request-ID) in requests.csv.")
    if lat["p50"] and lat["p95"] and lat["p95"] > TAIL_RATIO * lat["p50"]:
        if len(instances) > 1:
            out.append(f"p95 ({lat['p95']:.0f} ms) is {lat['p95'] / lat['p50']:.1f}x p50: a long recording "
                       "holds up the requests behind it; with balancing = \"round_robin\" in fleet.toml, "
                       "go back to least_conn (the default), else a shorter ASR_MAX_SEGMENT_SECONDS "
                       "cuts the tail.")
        else:
            out.append(f"p95 ({lat['p95']:.0f} ms) is {lat['p95'] / lat['p50']:.1f}x p50: requests queue "
                       "behind long recordings; more instances or a shorter ASR_MAX_SEGMENT_SECONDS cut "
                       "the tail.")
    shares = [v["share"] for v in instances.values()]
    if len(shares) > 1 and min(shares) > 0 and max(shares) / min(shares) > UNEVEN_SHARE:
        out.append("Requests were spread unevenly over instances: check the upstream weights and that "
                   "every instance is healthy (`make status`).")
    if cpu_busy:
        out.append(f"CPU was {cpu['avg']:.0f}% busy on average: throughput is CPU-bound here; more "
                   "instances than cores will not help (try a GPU, a smaller model, or fewer threads).")
    elif cpu and cpu["avg"] < CPU_IDLE and req["ok"] == req["sent"] and req["sent"]:
        out.append(f"CPU was only {cpu['avg']:.0f}% busy with no errors: raise --concurrency or add "
                   "instances to find the limit.")
    if client and client["avg"] >= CLIENT_CPU_HEAVY:
        out.append(f"The load generator itself used {client['avg']:.0f}% of the machine: on the same "
                   "host it competes with the server, so these figures understate the fleet.")
    memory = res["memory_percent"]
    if memory and memory["max"] >= MEMORY_FULL:
        out.append(f"Memory peaked at {memory['max']:.0f}%: run fewer instances or a smaller model.")
    for gpu in res["gpus"] or []:
        if gpu["util_percent"] and gpu["util_percent"]["avg"] < GPU_IDLE:
            out.append(f"GPU {gpu['index']} averaged {gpu['util_percent']['avg']:.0f}% use: raise "
                       "--concurrency or ASR_BATCH_MAX_ITEMS to keep it busy.")
    rate = s["throughput"]["audio_seconds_per_s"]
    if req["ok"] and rate and rate < 1:
        out.append(f"The fleet transcribed {rate:.2f} s of audio per second: slower than real time at "
                   "this load.")
    if not out:
        out.append("No problem seen at this load; raise --concurrency to find the limit.")
    return out


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def render_text(s: dict) -> str:
    """The readable report, also the terminal summary."""
    req, thr, lat, res = s["requests"], s["throughput"], s["latency_ms"], s["resources"]
    c = s["config"]
    plan = f"{c['requests_per_user']} per user" if c["requests_per_user"] else f"{c['duration']:g} s"
    lines = [
        f"Load test of {s['target']} at {s['started_at']}",
        f"  {c['concurrency']} users, {plan}, delay {c['delay']:g} s, timeout {c['timeout']:g} s, "
        f"{s['files_in_mix']} files; stopped by {s['stopped_by']} after {s['elapsed_s']:.1f} s"
        + (f" ({s['drain_s']:.1f} s finishing requests in flight)" if s["drain_s"] >= 0.1 else "")
        + (f"; warm-up {s['warmup']['ok']}/{s['warmup']['sent']} ok" if s["warmup"]["sent"] else ""),
        "",
        (f"Requests      {req['sent']} sent, {req['ok']} ok, {req['failed']} failed "
        f"(success {req['success_rate']:.1%})"),
        (f"Throughput    {thr['requests_per_s']:.2f} req/s, {thr['audio_seconds_per_s']:.2f} audio s/s "
        f"({thr['audio_seconds']:.1f} s of audio)"),
        (f"Latency ms    avg {_ms(lat['avg'])}  p50 {_ms(lat['p50'])}  p90 {_ms(lat['p90'])}  "
        f"p95 {_ms(lat['p95'])}  p99 {_ms(lat['p99'])}  max {_ms(lat['max'])}  (successful requests)"),
    ]
    if s["request_rtf"]:
        lines.append(f"Per request   latency / audio length avg {s['request_rtf']['avg']:.3f}, "
                     f"max {s['request_rtf']['max']:.3f}")
    codes = ", ".join(f"{k}: {v}" for k, v in s["status_codes"].items()) or "none"
    lines.append(f"Status codes  {codes}")
    if s["errors"]:
        lines.append("Errors        " + ", ".join(f"{k}: {v}" for k, v in s["errors"].items()))
        for kind, detail in s["error_samples"].items():
            lines.append(f"  {kind}: {detail[:150]}")
    lines.append("Instances")
    for name, inst in s["instances"].items():
        lines.append(f"  {name:<24} {inst['share']:6.1%}  {inst['requests']} requests, {inst['ok']} ok, "
                     f"p50 {_ms(inst['latency_ms']['p50'])} ms, p95 {_ms(inst['latency_ms']['p95'])} ms")
    if not s["instances"]:
        lines.append("  none answered")

    def am(d, unit="%"):
        return "-" if not d else f"avg {d['avg']:.0f}{unit}, max {d['max']:.0f}{unit}"

    lines.append(f"Machine       {res['cpu_count']} CPUs {am(res['cpu_percent'])} "
                 f"(load generator {am(res['client_cpu_percent'])}); memory {am(res['memory_percent'])} "
                 f"of {res['memory_total_mb']} MB")
    for gpu in res["gpus"] or []:
        lines.append(f"GPU {gpu['index']}         {gpu['name']}: use {am(gpu['util_percent'])}, "
                     f"memory {am(gpu['memory_used_mb'], ' MB')} of {gpu['memory_total_mb']:.0f} MB")
    lines += ["", "Suggestions"] + [f"  - {line}" for line in s["suggestions"]]
    return "\n".join(lines)


def write_png(s: dict, path: Path) -> Path:
    """Latency histogram, throughput over time, per-instance share and CPU/memory, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((a, b), (c, d)) = plt.subplots(2, 2, figsize=(12, 8))
    fig.suptitle(f"{s['target']}: {s['config']['concurrency']} users, {s['requests']['sent']} requests, "
                 f"{s['requests']['success_rate']:.1%} ok")
    latencies = s.get("_latencies_ms") or []
    if latencies:
        a.hist(latencies, bins=min(40, max(5, len(latencies) // 3)), color="tab:blue")
        for q, style in (("p50", "--"), ("p95", ":"), ("p99", "-.")):
            value = s["latency_ms"][q]
            if value is not None:
                a.axvline(value, color="black", linestyle=style, label=f"{q} {value:.0f} ms")
        a.legend()
    else:
        a.text(0.5, 0.5, "no successful request", ha="center", va="center", transform=a.transAxes)
    a.set(title="Latency (successful requests)", xlabel="ms", ylabel="requests")

    t = s["timeline"]
    b.plot(t["t"], t["ok_per_s"], marker=".", label="ok req/s")
    b.plot(t["t"], t["errors_per_s"], marker=".", color="tab:red", label="errors/s")
    b.set(title="Throughput over time", xlabel="s", ylabel="requests/s")
    b2 = b.twinx()
    b2.plot(t["t"], t["audio_seconds_per_s"], color="tab:green", alpha=0.6, label="audio s/s")
    b2.set_ylabel("audio seconds / s")
    handles = b.get_legend_handles_labels()[0] + b2.get_legend_handles_labels()[0]
    b.legend(handles, [h.get_label() for h in handles], loc="upper left")

    names = list(s["instances"]) or ["none"]
    shares = [s["instances"][n]["share"] for n in names] if s["instances"] else [0]
    c.barh(names, shares, color="tab:purple")
    for i, value in enumerate(shares):
        c.text(value, i, f" {value:.1%}", va="center")
    c.set(title="Share of requests per instance (X-ASR-Worker)", xlabel="share", xlim=(0, 1.15))

    r = s["resource_timeline"]
    if r:
        xs = [row["t"] for row in r]
        d.plot(xs, [row["cpu_percent"] for row in r], label="CPU %")
        d.plot(xs, [row["client_cpu_percent"] for row in r], label="load generator CPU %")
        d.plot(xs, [row["memory_percent"] for row in r], label="memory %")
        gpu_count = max(len(row["gpu_util"]) for row in r)
        for g in range(gpu_count):
            d.plot(xs, [row["gpu_util"][g] if g < len(row["gpu_util"]) else None for row in r],
                   label=f"GPU {g} %")
        d.legend(loc="upper left")
    d.set(title="Machine during the run", xlabel="s", ylabel="%", ylim=(0, 105))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(result, s: dict, out: Path, png: bool = True) -> dict[str, Path]:
    """summary.json, report.txt, requests.csv (one row per request) and loadtest.png in `out`."""
    from .client import request_id  # imported here: loadtest.stats imports this module first

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "summary.json", "text": out / "report.txt", "csv": out / "requests.csv"}
    paths["json"].write_text(json.dumps(s, indent=2) + "\n")
    paths["text"].write_text(render_text(s) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "user", "file", "start_s", "latency_ms", "status", "error",
                         "worker", "audio_seconds"])
        for x in result.samples:
            writer.writerow([request_id(result.run_id, x.index), x.user, x.file, f"{x.start:.3f}",
                             f"{x.latency * 1000:.1f}", x.status or "", x.error or "", x.worker or "",
                             "" if x.audio_seconds is None else f"{x.audio_seconds:.3f}"])
    if png:
        latencies = [x.latency * 1000 for x in result.samples if x.ok]
        paths["png"] = write_png({**s, "_latencies_ms": latencies}, out / "loadtest.png")
    return paths
