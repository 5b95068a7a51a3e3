"""The load test's figures: percentiles, latency, throughput, resources, all as plain data.

`summarize(result) -> dict` turns a LoadResult into every figure of the
report, suggestions included; nothing here sends a request or prints.
"""

from __future__ import annotations

import math

import psutil

from . import report
from .client import Sample
from .config import check_target
from .core import LoadResult


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def latency_stats(seconds: list[float]) -> dict:
    values = sorted(s * 1000 for s in seconds)
    if not values:
        return {"count": 0, "avg": None, "min": None, "p50": None, "p90": None, "p95": None,
                "p99": None, "max": None}
    out = {"count": len(values), "avg": sum(values) / len(values), "min": values[0]}
    out.update({f"p{q}": percentile(values, q) for q in (50, 90, 95, 99)})
    out["max"] = values[-1]
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def _avg_max(values: list[float], digits: int = 1) -> dict | None:
    if not values:
        return None
    return {"avg": round(sum(values) / len(values), digits), "max": round(max(values), digits)}


def _counts(keys) -> dict:
    out: dict = {}
    for key in keys:
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def _timeline(samples: list[Sample], elapsed: float) -> dict:
    width = 1.0 if elapsed <= 120 else math.ceil(elapsed / 120)
    bins = max(1, int(elapsed // width))  # the last bin takes the remainder, so none is a sliver
    ok, err, audio = [0] * bins, [0] * bins, [0.0] * bins
    for s in samples:
        i = min(bins - 1, int((s.start + s.latency) / width))
        if s.ok:
            ok[i] += 1
            audio[i] += s.audio_seconds or 0.0
        else:
            err[i] += 1
    spans = [width] * (bins - 1) + [max(elapsed - (bins - 1) * width, 1e-9)]
    return {
        "bin_s": width,
        "t": [round(i * width + spans[i] / 2, 2) for i in range(bins)],
        "ok_per_s": [round(ok[i] / spans[i], 3) for i in range(bins)],
        "errors_per_s": [round(err[i] / spans[i], 3) for i in range(bins)],
        "audio_seconds_per_s": [round(audio[i] / spans[i], 3) for i in range(bins)],
    }


def _resources(result: LoadResult) -> dict:
    res = result.resources
    gpus = []
    for index, info in sorted(result.gpus.items()):
        rows = [g for r in res for g in r["gpus"] if g["index"] == index]
        gpus.append({"index": index, **info,
                     "util_percent": _avg_max([g["util"] for g in rows]),
                     "memory_used_mb": _avg_max([g["memory_used_mb"] for g in rows])})
    return {
        "samples": len(res),
        "interval_s": result.config.sample_interval,
        "cpu_count": psutil.cpu_count(),
        "cpu_percent": _avg_max([r["cpu_percent"] for r in res]),
        "client_cpu_percent": _avg_max([r["client_cpu_percent"] for r in res]),
        "memory_percent": _avg_max([r["memory_percent"] for r in res]),
        "memory_used_mb": _avg_max([r["memory_used_mb"] for r in res]),
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "gpus": gpus or None,
    }


def summarize(result: LoadResult) -> dict:
    """Every figure of the report as plain JSON-able data, suggestions included."""
    samples, elapsed = result.samples, max(result.elapsed, 1e-9)
    ok = [s for s in samples if s.ok]
    answered = [s for s in samples if s.status is not None]
    audio_total = sum(s.audio_seconds or 0.0 for s in ok)
    audio_known = [s for s in ok if s.audio_seconds]
    instances = {}
    for name, count in _counts(s.worker for s in answered).items():
        mine = [s for s in answered if s.worker == name]
        instances[name] = {
            "requests": count, "share": round(count / len(answered), 4),
            "ok": sum(s.ok for s in mine),
            "latency_ms": latency_stats([s.latency for s in mine if s.ok]),
        }
    files = {}
    for f in result.files:
        mine = [s for s in samples if s.file == f.name]
        if mine:
            files[f.name] = {"requests": len(mine), "ok": sum(s.ok for s in mine),
                             "audio_seconds": next((s.audio_seconds for s in mine if s.audio_seconds), None),
                             "latency_ms": latency_stats([s.latency for s in mine if s.ok])}
    error_samples = {}
    for s in samples:
        if s.error and s.error not in error_samples:
            error_samples[s.error] = s.detail
    config = result.config
    summary = {
        "tool": "scripts/loadtest.py",
        "run_id": result.run_id,
        "started_at": result.started_at,
        "target": check_target(config.url, True) + config.endpoint,
        "config": config.as_dict(),
        "stopped_by": result.stopped_by,
        "files_in_mix": len(result.files),
        # Requests still running when the duration ended finish and count; this is how long that took.
        "drain_s": round(max(0.0, result.elapsed - config.duration), 3) if config.duration else 0.0,
        "elapsed_s": round(result.elapsed, 3),
        "requests": {
            "sent": len(samples), "ok": len(ok), "failed": len(samples) - len(ok),
            "success_rate": round(len(ok) / len(samples), 4) if samples else 0.0,
        },
        "warmup": {"sent": len(result.warmup), "ok": sum(s.ok for s in result.warmup)},
        "throughput": {
            "requests_per_s": round(len(samples) / elapsed, 3),
            "ok_requests_per_s": round(len(ok) / elapsed, 3),
            "audio_seconds": round(audio_total, 3),
            # The fleet's speed against real time: 10 means ten seconds of audio every second.
            "audio_seconds_per_s": round(audio_total / elapsed, 3),
            "audio_unknown_requests": len(ok) - len(audio_known),
        },
        "latency_ms": latency_stats([s.latency for s in ok]),
        "latency_all_ms": latency_stats([s.latency for s in samples]),
        # Per request: seconds of waiting per second of audio (below 1 is faster than real time).
        "request_rtf": _avg_max([s.latency / s.audio_seconds for s in audio_known], 4),
        "status_codes": {str(k): v for k, v in _counts(s.status for s in answered).items()},
        "errors": _counts(s.error for s in samples if s.error),
        "error_samples": error_samples,
        "instances": instances,
        "files": files,
        "resources": _resources(result),
        "timeline": _timeline(samples, result.elapsed),
        "resource_timeline": [{k: v for k, v in r.items() if k != "gpus"} |
                              {"gpu_util": [g["util"] for g in r["gpus"]]} for r in result.resources],
    }
    summary["suggestions"] = report.suggestions(summary)
    return summary
