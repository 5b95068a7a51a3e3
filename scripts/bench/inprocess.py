"""The same work without HTTP: the app's own pipeline, or the bare engine, in this process.

`Pipeline` is `app.service.Transcriber` (VAD, batcher, inference thread,
engine) fed by N threads that each decode an upload with `app.audio.decode`
and transcribe it, exactly what a worker's handler thread does minus Flask,
Gunicorn, Nginx and the HTTP client. `engine_rtf` times the engine alone.
"""

from __future__ import annotations

import gc
import threading
import time

import psutil

from loadtest.config import AudioFile
from loadtest.stats import latency_stats

from . import gpu
from .env import REPO, CpuMeter  # bench.env also puts the repository on sys.path for `app`


def cpu_seconds() -> float:
    """CPU time of this process and its live children (pocketsphinx decodes in one)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


class Pipeline:
    """One Transcriber, loaded as a worker loads it (model, VAD, warm-up)."""

    def __init__(self, **settings):
        from app.metrics import Metrics
        from app.service import Transcriber
        from app.settings import Settings

        self.settings = Settings(**{**gpu.in_process(), **settings})  # on the first GPU, if any
        self.transcriber = Transcriber(self.settings, Metrics())
        self.transcriber.start(exit_on_failure=False)
        if not self.transcriber.wait_ready(600):
            raise RuntimeError(f"in-process pipeline did not load: {self.transcriber.reason}")

    def handle(self, upload: bytes) -> float:
        """One request's work; returns the audio seconds."""
        from app import audio
        from app.engines import DecodeOptions

        samples = audio.decode(upload, max_seconds=self.settings.max_audio_seconds,
                               ffmpeg_timeout=self.settings.ffmpeg_timeout_seconds)
        result = self.transcriber.transcribe(samples, DecodeOptions(), use_vad=True)
        return result.duration

    def run(self, files: list[AudioFile], concurrency: int, per_user: int) -> dict:
        """Like run_load with `requests=per_user`: user u sends files u, u+1, ... in turn."""
        latencies, audio_total, errors = [], [0.0], []
        lock = threading.Lock()

        def user(u: int) -> None:
            for k in range(per_user):
                start = time.monotonic()
                try:
                    seconds = self.handle(files[(u + k) % len(files)].data)
                except Exception as error:  # noqa: BLE001 - counted, like the load test does
                    with lock:
                        errors.append(repr(error))
                    continue
                with lock:
                    latencies.append(time.monotonic() - start)
                    audio_total[0] += seconds

        meter, t0 = CpuMeter(), time.monotonic()
        threads = [threading.Thread(target=user, args=(u,), daemon=True) for u in range(concurrency)]
        with gpu.during_load():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.monotonic() - t0
        return compact(sent=concurrency * per_user, ok=len(latencies), elapsed=elapsed,
                       audio=audio_total[0], latency_ms=latency_stats(latencies),
                       cpu=meter.read(), errors=errors[:3], cpu_by_kind=meter.by_kind())


def compact(*, sent: int, ok: int, elapsed: float, audio: float, latency_ms: dict, cpu: tuple[float, float],
            errors, cpu_by_kind: dict) -> dict:
    """The figures a benchmark row needs, the same for HTTP and in-process runs."""
    return {"sent": sent, "ok": ok, "elapsed_s": round(elapsed, 3), "audio_s": round(audio, 3),
            "audio_s_per_s": round(audio / elapsed, 3), "req_per_s": round(ok / elapsed, 3),
            "p50_ms": latency_ms["p50"], "p95_ms": latency_ms["p95"], "max_ms": latency_ms["max"],
            # CPU seconds of our processes (client, Nginx, workers, poller) per audio second.
            "cpu_per_audio_s": round(cpu[0] / audio, 4) if audio else None, "cpu_s": round(cpu[0], 2),
            # Cores busy with other tenants' work meanwhile: the noise the rounds ran under.
            "foreign_cores": round(cpu[1] / elapsed, 2), "cpu_by_kind": cpu_by_kind, "errors": errors}


def engine_rtf(settings: dict, files: list[AudioFile]) -> dict:
    """The engine alone, one clip per call on decoded audio: wall and CPU seconds per audio second."""
    from app import audio
    from app.engines import DecodeOptions, load_engine
    from app.settings import Settings

    clips = [audio.decode(f.data, max_seconds=600, ffmpeg_timeout=60) for f in files]
    started = time.monotonic()
    engine = load_engine(Settings(**{**gpu.in_process(), **settings}))  # on the first GPU, if any
    load_s = time.monotonic() - started
    engine.transcribe_batch(clips[:1], DecodeOptions())  # warm-up, not timed
    cpu0, t0 = cpu_seconds(), time.monotonic()
    with gpu.during_load():
        for clip in clips:
            engine.transcribe_batch([clip], DecodeOptions())
    wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    seconds = sum(len(c) for c in clips) / audio.SAMPLE_RATE
    out = {"model": engine.model.replace(f"{REPO}/", ""), "engine": engine.name, "load_s": round(load_s, 1),
           "audio_s": round(seconds, 2), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
           "rtf": round(wall / seconds, 4), "cpu_rtf": round(cpu / seconds, 4),
           "cores_busy": round(cpu / wall, 2)}
    del engine
    gc.collect()
    return out
