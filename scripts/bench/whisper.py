"""The Whisper worker against faster-whisper itself, and how it starts.

`stack` answers "what does serving cost?": the same recordings through a
Whisper base worker (HTTP, Gunicorn, VAD, the batcher) and through
faster-whisper's own batched pipeline called in this process, with the same
model, precision and threads, at the same concurrency, in alternating rounds.
It also records the worker's start-up time and resident memory. On a GPU
machine both run on the first GPU in float16 (what the worker's `auto`
precision picks there), else on the CPU in int8.
"""

from __future__ import annotations

import time

import psutil

from . import gpu
from .env import MIXED, audio_set, machine
from .http import _strip, alternate, http_run, pooled
from .inprocess import Pipeline
from .lab import Lab
from .stats import GAIN, band, paired


class FasterWhisper(Pipeline):
    """faster-whisper's BatchedInferencePipeline on the decoded upload: what a
    user could run without any server. One model, shared by the user threads."""

    def __init__(self, model: str, cpu_threads: int, device: str, compute_type: str):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        from app.engines import whisper_models
        from app.settings import Settings

        self.settings = Settings()
        whisper = WhisperModel(str(whisper_models.resolve(model)), device=device, compute_type=compute_type,
                               cpu_threads=cpu_threads)
        self.pipeline = BatchedInferencePipeline(whisper)

    def handle(self, upload: bytes) -> float:
        from app import audio

        samples = audio.decode(upload, max_seconds=self.settings.max_audio_seconds,
                               ffmpeg_timeout=self.settings.ffmpeg_timeout_seconds)
        segments, _ = self.pipeline.transcribe(samples, batch_size=8)
        list(segments)  # the generator does the work
        return len(samples) / audio.SAMPLE_RATE


def stack(lab: Lab, opts) -> dict:
    """Stack cost: a Whisper base worker against faster-whisper in this process."""
    files, c = audio_set(MIXED), opts.concurrency
    per_user = 2 if opts.quick else 5
    threads = machine()["nproc"] or 1
    # Both on the same device: GPU 0 for the worker and for this process when there is a GPU.
    device, compute_type = ("cuda", "float16") if lab.gpus else ("cpu", "int8")
    pin = gpu.worker_env(0) if lab.gpus else {}
    started = time.monotonic()
    worker = lab.worker("whisper-stack", {"ASR_ENGINE": "whisper", "ASR_MODEL": "base",
                                          "ASR_CPU_THREADS": str(threads), **pin})
    ready_s = time.monotonic() - started
    local = FasterWhisper("base", threads, device, compute_type)
    http_run(worker.url, files, c, 1)  # warm both: first requests pay lazy imports
    local.run(files, c, 1)
    master = psutil.Process(worker.process.pid)
    resident_mb = sum(p.memory_info().rss for p in [master, *master.children(recursive=True)]) / 2**20
    runs = alternate({"worker": lambda: http_run(worker.url, files, c, per_user),
                      "faster-whisper": lambda: local.run(files, c, per_user)}, opts.rounds)
    lab.release(worker)
    served, own = pooled(runs["worker"]), pooled(runs["faster-whisper"])
    per_round = paired(served["per_round"], own["per_round"], lambda a, b: 1 - a / b)
    return {"name": "whisper_stack", "worker": served, "faster_whisper": own,
            "stack_cost": round(1 - served["audio_s_per_s"] / own["audio_s_per_s"], 4),
            "stack_cost_band": band(per_round, GAIN), "ready_s": round(ready_s, 1),
            "resident_mb": round(resident_mb), "threads": threads, "concurrency": c, "per_user": per_user,
            "device": device, "compute_type": compute_type,
            "files": [f.name for f in files], "runs": _strip(runs)}
