"""The transcription service: load the model, then segment, batch, assemble.

One Transcriber per worker process. It loads in a background thread so the
worker answers /health (503, "loading") while a large model loads, and it is
ready only after one warm-up inference has gone through the batcher.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator

import numpy as np

from app import vad
from app.audio import SAMPLE_RATE
from app.batching import Batcher, wait_all
from app.engines import DecodeOptions, Engine, Transcript, batch_items, load_engine
from app.engines.base import Word
from app.errors import ASRError, DeadlineExceeded, Overloaded, Unprocessable
from app.formats import SegmentText
from app.metrics import Metrics
from app.settings import Settings

log = logging.getLogger(__name__)

# OpenAI clients send ISO 639-1 codes; SenseVoice names Cantonese "yue".
LANGUAGE_ALIASES = {"zh-cn": "zh", "cmn": "zh", "zh-hk": "yue", "en-us": "en", "en-gb": "en"}
# Gunicorn reads this exit status as "worker failed to boot" and stops the
# master instead of forking the same failure forever.
WORKER_BOOT_ERROR = 3


@dataclasses.dataclass(frozen=True)
class Transcription:
    segments: list[SegmentText]
    failed_segments: int
    language: str
    duration: float

    @property
    def total_segments(self) -> int:
        return len(self.segments) + self.failed_segments


class Transcriber:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.state = "loading"
        self.reason = ""
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.segmenter = vad.Segmenter(settings.max_segment_seconds, settings.min_segment_seconds)
        self._ready = threading.Event()

    def start(self, *, exit_on_failure: bool) -> None:
        """Loads in the background; a failure exits the process when asked to."""
        threading.Thread(target=self._load, args=(exit_on_failure,), name="loader",
                         daemon=True).start()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout) and self.state == "ok"

    @property
    def healthy(self) -> bool:
        return self.state == "ok" and self.batcher is not None and self.batcher.alive

    def _load(self, exit_on_failure: bool) -> None:
        started = time.monotonic()
        try:
            self.engine = load_engine(self.settings)
            self.segmenter.load()
            self.batcher = Batcher(
                self.engine, max_items=self.settings.batch_max_items or batch_items(self.engine),
                max_seconds=self.settings.batch_max_seconds,
                wait_s=self.settings.batch_wait_ms / 1000, queue_limit=self.settings.queue_max_items,
                retries=self.settings.segment_retries, backoff_s=self.settings.retry_backoff_seconds,
                on_batch=self.metrics.batch_done)
            self.batcher.start()
            self._warm_up()
        except Exception as error:  # noqa: BLE001 - any failure means not ready
            self.state, self.reason = "broken", _one_line(error)
            log.critical("model load failed: %s", self.reason)
            self._ready.set()
            if exit_on_failure:
                logging.shutdown()
                os._exit(WORKER_BOOT_ERROR)
            return
        self.state = "ok"
        log.info("ready: %s engine %s on %s in %.1f s", self.engine.model, self.engine.name,
                 self.engine.device, time.monotonic() - started)
        self._ready.set()

    def _warm_up(self) -> None:
        # Low noise rather than silence: some models skip all-zero input.
        noise = np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
        jobs = self.batcher.submit([noise], DecodeOptions(), time.monotonic() + 600)
        outcome = wait_all(jobs, time.monotonic() + 600)[0]
        if isinstance(outcome, Exception):
            raise outcome

    def check_language(self, language: str | None) -> str:
        """Returns the model's code for `language`, or raises 422."""
        code = (language or "auto").strip().lower()
        code = LANGUAGE_ALIASES.get(code, code)
        engine = self._ready_engine()
        if code not in engine.languages:
            raise Unprocessable(
                f"language {code!r} is not supported by {engine.model}; "
                f"supported: {', '.join(sorted(engine.languages))}", param="language")
        return code

    def _ready_engine(self) -> Engine:
        if self.state != "ok" or self.engine is None:
            raise Overloaded(f"model not ready ({self.state})", retry_after=5)
        return self.engine

    def transcribe(self, samples: np.ndarray, options: DecodeOptions, *, use_vad: bool,
                   timeout: float | None = None) -> Transcription:
        """timeout: this request's deadline in seconds (app/jobs/pace.py sets
        it from the audio's length); None is ASR_REQUEST_TIMEOUT."""
        windows = self._windows(samples, use_vad)
        deadline = time.monotonic() + (timeout or self.settings.request_timeout_seconds)
        jobs = self.batcher.submit([w.cut(samples) for w in windows], options, deadline)
        try:
            outcomes = wait_all(jobs, deadline)
        except ASRError:
            self.batcher.cancel(jobs)
            raise
        done, failed, languages = [], 0, collections.Counter()
        for window, outcome in zip(windows, outcomes):
            if isinstance(outcome, Exception):
                failed += 1
                continue
            done.extend(_timed(window, outcome))
            if outcome.language:
                languages[outcome.language] += 1
        if failed and not done:
            raise ASRError(f"transcription failed for all {failed} segments")
        detected = languages.most_common(1)[0][0] if languages else options.language
        return Transcription(done, failed, detected, len(samples) / SAMPLE_RATE)

    def _windows(self, samples: np.ndarray, use_vad: bool) -> list[vad.Window]:
        engine = self._ready_engine()
        segments = self.segmenter.split(samples) if use_vad else vad.whole(samples)
        if engine.window_seconds:
            return vad.merge(segments, engine.window_seconds)
        return [vad.Window((segment,)) for segment in segments]

    def stream(self, samples: np.ndarray, options: DecodeOptions, *, timeout: float | None = None,
               poll_s: float = 1.0) -> Iterator[list[SegmentText] | None]:
        """Each window's segments as soon as it and every window before it
        are done, in order; None every `poll_s` while waiting, so a streaming
        caller writes a keep-alive (and learns that its client has gone).
        Closing the generator cancels the windows still queued: a client that
        left costs no more model time. VAD and queueing happen here, before
        the first event, so a full queue is still a plain 503."""
        windows = self._windows(samples, use_vad=True)
        deadline = time.monotonic() + (timeout or self.settings.request_timeout_seconds)
        jobs = self.batcher.submit([w.cut(samples) for w in windows], options, deadline, first_alone=True)
        return self._in_order(windows, jobs, deadline, poll_s)

    def _in_order(self, windows: list[vad.Window], jobs: list, deadline: float,
                  poll_s: float) -> Iterator[list[SegmentText] | None]:
        done = failed = 0
        try:
            for window, job in zip(windows, jobs):
                outcome = _await(job, deadline, poll_s)
                while outcome is None:
                    yield None
                    outcome = _await(job, deadline, poll_s)
                if isinstance(outcome, Exception):
                    failed += 1
                    continue
                done += 1
                yield _timed(window, outcome)
        finally:
            self.batcher.cancel(jobs)
        if failed and not done:
            raise ASRError(f"transcription failed for all {failed} segments")


def _await(job, deadline: float, poll_s: float) -> Transcript | Exception | None:
    """The job's outcome, or None when `poll_s` passed first."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("request took longer than the per-request deadline")
    try:
        return job.future.result(timeout=min(poll_s, remaining))
    except TimeoutError:
        return None
    except DeadlineExceeded:
        raise  # the request's deadline, as in wait_all: not a failed segment
    except Exception as error:  # noqa: BLE001 - reported per segment, as in wait_all
        return error


def _timed(window: vad.Window, outcome: Transcript) -> list[SegmentText]:
    """The outcome's text at its times in the recording: the model's own
    pieces when it timed them, else one segment spanning the window."""
    if not outcome.pieces:
        return [SegmentText(window.start, window.end, outcome.text, outcome.emotion, outcome.event)]
    return [
        SegmentText(
            window.to_recording(piece.start), window.to_recording(piece.end, is_end=True), piece.text,
            outcome.emotion, outcome.event,
            words=tuple(Word(window.to_recording(w.start), window.to_recording(w.end, is_end=True),
                             w.word, w.probability) for w in piece.words),
            avg_logprob=piece.avg_logprob, no_speech_prob=piece.no_speech_prob,
            compression_ratio=piece.compression_ratio)
        for piece in outcome.pieces
    ]


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
