"""Benchmarks about the model: cross-request batching, and each engine's real-time factor.

Batching runs on --engine (by default the embedded Whisper base, what an
offline fleet serves). The FunASR rows use SenseVoiceSmall's real shape with
random weights (`make_tiny_model.py models/sensevoice-full --full-size`,
built once and cached under the git-ignored models/): the compute is the
real model's, the transcripts are noise.
"""

from __future__ import annotations

import sys
from functools import partial

from .env import FULL_MODEL, MIXED, SHORT, TINY_MODEL, audio_set, engine_settings, ensure_model
from .http import alternate, http_run, pooled, throughput_ratio
from .inprocess import engine_rtf
from .lab import Lab
from .stats import GAIN, band, paired


def batching(lab: Lab, opts) -> dict:
    """ASR_BATCH_MAX_ITEMS=8 against =1 on two direct Gunicorn workers, at several concurrencies."""
    settings = engine_settings(opts.engine)
    env = {"ASR_ENGINE": settings["engine"], "ASR_MODEL": settings.get("model", "")}
    files = audio_set(SHORT)
    concurrencies = [1, 8] if opts.quick else [1, 4, 8]
    total = 8 if opts.quick else 16  # requests per run, whatever the concurrency
    workers = {}
    for name, items in (("on", 8), ("off", 1)):  # one at a time: two loads at once fight for the CPU
        workers[name] = lab.worker(f"batch-{name}", {**env, "ASR_BATCH_MAX_ITEMS": str(items)})
    for worker in workers.values():
        http_run(worker.url, files, 2, 1)
    table, runs = {}, {}
    for c in concurrencies:
        per_user = max(1, total // c)
        before = _batch_counts(workers["on"].url)
        got = alternate({name: partial(http_run, w.url, files, c, per_user) for name, w in workers.items()},
                        opts.rounds)
        on, off = pooled(got["on"]), pooled(got["off"])
        table[c] = {"on": on, "off": off, "gain": round(on["audio_s_per_s"] / off["audio_s_per_s"] - 1, 4),
                    "mean_batch": _mean_batch(before, _batch_counts(workers["on"].url))}
        runs[c] = {k: [{f: v for f, v in r.items() if not f.startswith("_")} for r in rows]
                   for k, rows in got.items()}
    for worker in list(workers.values()):
        lab.release(worker)
    result = {"name": "batching", "table": table, "engine_env": env,
              "files": [f.name for f in files], "requests_per_run": total, "runs": runs}
    for c, gain_band in batching_bands(result).items():
        table[c]["gain_band"] = gain_band
    return result


def batching_bands(r: dict) -> dict:
    """The batching gain per round pair (on's round r over off's round r), by concurrency, from the
    stored rounds: so figures stored before the bands were kept get them too."""
    return {c: band(paired(rows["on"], rows["off"], lambda a, b: throughput_ratio(a, b) - 1), GAIN)
            for c, rows in r["runs"].items()}


def _batch_counts(url: str) -> tuple[float, float]:
    """The worker's asr_batch_size histogram: (model calls, segments) so far."""
    import requests

    count = total = 0.0
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("asr_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("asr_batch_size_sum"):
            total = float(line.split()[-1])
    return count, total


def _mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Segments per model call between two readings: how full the batches really were."""
    calls = after[0] - before[0]
    return round((after[1] - before[1]) / calls, 2) if calls else None


def rtf(lab: Lab, opts) -> dict:
    """Each engine alone, in this process, over the same decoded clips."""
    files = audio_set(MIXED[:3] + MIXED[5:7] if opts.quick else MIXED)
    engines = {
        "Whisper base (embedded)": {"engine": "whisper", "model": "base"},
        "Whisper tiny.en (embedded)": {"engine": "whisper", "model": "tiny.en"},
        "pocketsphinx": {"engine": "pocketsphinx"},
        "FunASR tiny (random weights)": {"engine": "funasr",
                                         "model": str(ensure_model(TINY_MODEL, full_size=False))},
        "FunASR SenseVoiceSmall shape": {"engine": "funasr",
                                         "model": str(ensure_model(FULL_MODEL, full_size=True))},
    }
    table = {}
    for name, settings in engines.items():
        table[name] = engine_rtf(settings, files)
        print(f"bench:   {name}: RTF {table[name]['rtf']}, CPU RTF {table[name]['cpu_rtf']}",
              flush=True, file=sys.stderr)
    return {"name": "rtf", "table": table, "files": [f.name for f in files],
            "audio_s": table[next(iter(table))]["audio_s"]}
