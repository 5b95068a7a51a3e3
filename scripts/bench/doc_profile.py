"""The Profile section of docs/benchmarks.md: py-spy buckets, step costs, findings."""

from __future__ import annotations

from .markdown import table
from .profile import UNSAMPLED


def _worker(w: dict) -> str:
    cpu = table(["on-CPU bucket", "share", "ms per request"],
                 [[b["what"], f"{b['share'] * 100:.1f}%", b["ms_per_request"]] for b in w["cpu"]])
    wall = table(["handler thread time", "share", "ms per request"],
                  [[b["what"], f"{b['share'] * 100:.1f}%", b["ms_per_request"]] for b in w["handler_wall"]])
    top = "\n".join(f"    {n:5d}  {frame}" for frame, n in w["top_cpu"])
    threads = f", `ASR_CPU_THREADS={w['threads']}`" if w.get("threads") else ""
    return (f"### Worker: {w['engine']}\n\n{w['concurrency']} users on the mixed set through "
            f"`{w.get('endpoint', '/asr')}`{threads}; py-spy "
            f"{w['seconds']} s on-CPU ({w['requests']} requests finished meanwhile), then {w['seconds']} s "
            f"of every thread (`--idle`, {w['idle_requests']} requests)." + _process(w) + f"\n\n{cpu}\n{wall}\n"
            f"Busiest innermost frames (on-CPU samples):\n\n```\n{top}\n```\n")


def _process(w: dict) -> str:
    """The worker's own CPU time beside the samples (results stored before it was kept have none)."""
    if w.get("process_cpu_ms_per_request") is None:
        return ""
    sampled = sum(b["ms_per_request"] for b in w["cpu"] if b["what"] != UNSAMPLED)
    return (f" The worker process used {w['process_cpu_ms_per_request']} ms of CPU per request meanwhile "
            f"(psutil), the samples account for {sampled:.1f} ms; shares are of "
            + ("the process's CPU time." if any(b["what"] == UNSAMPLED for b in w["cpu"]) else "the samples."))


def _steps(s: dict) -> str:
    cols = ["multipart_ms", "decode_ms", "downmix_ms", "downmix_by_channel_ms", "resample_ms",
            "finite_checks_ms", "vad_ms", "body_ms"]
    head = ["file", "source", "audio s", "segments", "multipart", "decode (all)", "of which downmix",
            "downmix by channel", "resample", "isfinite", "VAD", "JSON body"]
    rows = [[r["file"], r["source"], r["audio_s"], r["segments"], *[r[c] for c in cols]] for r in s["rows"]]
    rows.append(["**mean per request**", "", "", "", *[f"**{s['mean_per_request'][c]}**" for c in cols]])
    return ("### Each request-path step alone (ms, median of repeats, one thread)\n\n" + table(head, rows)
            + f"\nSilero VAD: **{s['vad_ms_per_audio_s']} ms per audio second**.\n")


def _part(worker: dict, prefix: str, key: str = "ms_per_request") -> float:
    return sum(b[key] for b in worker["cpu"] if b["what"].startswith(prefix))


def findings(r: dict) -> str:
    steps = r.get("steps", {})
    mean = steps.get("mean_per_request", {})
    jfk = next((x for x in steps.get("rows", []) if x["file"] == "jfk.flac"), None)
    workers = {w["engine"]: w for w in r.get("workers", [])}
    lines = ["### Findings\n"]
    vad_share = {}
    for name, w in workers.items():
        engine, vad = _part(w, "engine"), _part(w, "VAD")
        rest = sum(b["ms_per_request"] for b in w["cpu"]) - engine - vad
        vad_share[name] = _part(w, "VAD", "share")
        lines.append(f"- **{name} worker**: per request, the engine takes {engine:.0f} ms of CPU "
                     f"({_part(w, 'engine', 'share') * 100:.0f}% of the samples), Silero VAD {vad:.0f} ms "
                     f"({vad_share[name] * 100:.0f}%), everything else on the request path (HTTP, multipart, "
                     f"decode, body, hooks) {rest:.0f} ms.")
    if steps:
        lines.append(
            f"- **VAD** costs {steps['vad_ms_per_audio_s']} ms per audio "
            f"second ({mean.get('vad_ms')} ms per request on the mix): "
            "it runs Silero v6 through onnxruntime with its spectrogram taken by FFT (`app/silero.py`; "
            "section 8 measures it alone). It must stay on the path (it makes the segments); it "
            "dominates with a fast engine"
            + (f" (FunASR tiny: VAD is {vad_share['funasr-tiny'] * 100:.0f}% of that worker's CPU)."
               if "funasr-tiny" in vad_share else ", e.g. on a GPU."))
    if jfk:
        lines.append(
            f"- **Stereo downmix** (fixed): `frames.mean(axis=1)` takes {jfk['downmix_ms']} ms of the "
            f"{jfk['decode_ms']} ms decode of the 11 s 44.1 kHz stereo FLAC; summing the channel columns, "
            f"as `app/audio.py:_downmix` now does, takes {jfk['downmix_by_channel_ms']} ms.")
        lines.append(
            f"- **Resampling** (soxr HQ, {jfk['resample_ms']} ms for that file), the **finiteness checks** "
            f"({mean.get('finite_checks_ms')} ms; `_resample` and `_checked` both run `np.isfinite` on "
            f"resampled audio), the **decode copies** (`np.ascontiguousarray`, the ffmpeg path's "
            f"`astype(np.float32)` on data that already is float32) and the **JSON body** "
            f"({mean.get('body_ms')} ms) are each under a few ms per request: not worth changing for speed.")
    if mean:
        lines.append(
            f"- **Upload handling**: Werkzeug's multipart parse costs {mean.get('multipart_ms')} ms per "
            "request on the mix: small next to the model.")
    return "\n".join(lines) + "\n"


def render(r: dict) -> str:
    parts = [("Measured with py-spy (`py-spy record --threads --subprocesses --nonblocking`, "
              "100 Hz) on a direct Gunicorn worker, after the load test had warmed it.\n")]
    parts += [_worker(w) for w in r.get("workers", [])]
    if r.get("steps"):
        parts.append(_steps(r["steps"]))
    parts.append(findings(r))
    return "\n".join(parts)
