"""Cross-request batching: one inference thread owns the model.

Handler threads submit a request's segments as a group and wait on futures.
The inference thread takes up to `max_items` segments (or `max_seconds` of
audio) that decode the same way (language, task, prompt), waiting at most
`wait_s` for a batch to fill, and runs them as one engine call. For an
engine that pads a batch to its longest clip, a segment joins only while the
padding stays under MAX_PADDING of the batch's audio. A full queue
refuses the whole group at once, so the client (or Nginx) can go to another
worker instead of waiting here.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError

import numpy as np

from app.engines import SAMPLE_RATE, DecodeOptions, Engine, Transcript
from app.errors import DeadlineExceeded, Overloaded

log = logging.getLogger(__name__)

# Full-size SenseVoice on one CPU thread: a batch of 4 equal clips took 20%
# less CPU per audio second than the same clips one by one, a batch of the
# benchmark's mixed clips (3 to 11 s) 28% more. Padding above a fifth of
# the audio loses what batching gains.
MAX_PADDING = 0.2


@dataclasses.dataclass(eq=False)
class Job:
    """One segment waiting for the model."""

    audio: np.ndarray
    options: DecodeOptions
    deadline: float
    future: Future = dataclasses.field(default_factory=Future)
    attempts: int = 0
    # After a failed batch, a job runs alone so one bad segment cannot keep
    # failing its neighbours.
    solo: bool = False

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class Batcher:
    def __init__(self, engine: Engine, *, max_items: int, max_seconds: float, wait_s: float,
                 queue_limit: int, retries: int, backoff_s: float,
                 on_batch: Callable[[int, float, float], None] = lambda size, audio_s, model_s: None):
        self.engine = engine
        self.max_items = max_items
        self.max_seconds = max_seconds
        self.wait_s = wait_s
        self.queue_limit = queue_limit
        self.retries = retries
        self.backoff_s = backoff_s
        self.on_batch = on_batch
        self.max_padding = MAX_PADDING if getattr(engine, "pads_to_longest", False) else None
        self._queue: collections.deque[Job] = collections.deque()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        # Progress, for /health: the poller tells a busy worker (engine calls
        # keep returning) from a stuck one (one call far longer than any
        # before, or than its audio should take at the speed seen so far).
        self.batches_done = 0
        self.longest_batch_s = 0.0
        self._last_batch_end: float | None = None
        self._batch_started: float | None = None
        self._batch_audio_s = 0.0
        self._audio_done_s = self._model_done_s = 0.0

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def progress(self) -> dict:
        """Engine calls finished (failed ones too: the thread is not stuck),
        seconds since the last one ended, how long the running one has taken
        and how much audio it holds (0 when idle), the longest call so far,
        and model seconds per audio second over every call so far."""
        now, started, ended = time.monotonic(), self._batch_started, self._last_batch_end
        audio, model = self._audio_done_s, self._model_done_s
        return {"batches_done": self.batches_done,
                "last_batch_age_s": None if ended is None else round(now - ended, 2),
                "batch_running_s": 0.0 if started is None else round(now - started, 2),
                "batch_audio_s": 0.0 if started is None else round(self._batch_audio_s, 2),
                "longest_batch_s": round(self.longest_batch_s, 2),
                "model_s_per_audio_s": round(model / audio, 3) if audio else None}

    def submit(self, audios: list[np.ndarray], options: DecodeOptions, deadline: float, *,
               first_alone: bool = False) -> list[Job]:
        """Queues one request's segments, all or none; raises Overloaded when full.
        first_alone: the first segment runs in a batch of its own, so a
        streamed answer's first words take one segment's time, not a batch's."""
        jobs = [Job(audio, options, deadline) for audio in audios]
        if first_alone and len(jobs) > 1:
            jobs[0].solo = True
        with self._changed:
            # An empty queue takes any request, so a long recording with more
            # segments than the limit is still served when the worker is idle.
            if self._queue and len(self._queue) + len(jobs) > self.queue_limit:
                raise Overloaded(f"worker queue full ({len(self._queue)} segments waiting), retry shortly")
            self._queue.extend(jobs)
            self._changed.notify()
        return jobs

    def cancel(self, jobs: list[Job]) -> None:
        """Drops jobs nobody waits for any more (their request timed out)."""
        for job in jobs:
            job.future.cancel()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                self._run_batch(batch)

    def _next_batch(self) -> list[Job]:
        with self._changed:
            while not self._queue:
                self._changed.wait()
            first_arrival = time.monotonic()
            while len(self._queue) < self.max_items and not self._queue[0].solo:
                remaining = first_arrival + self.wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._take_batch()

    def _take_batch(self) -> list[Job]:
        first = self._queue.popleft()
        batch, seconds, longest = [first], first.seconds, first.seconds
        if first.solo:
            return batch
        kept: collections.deque[Job] = collections.deque()
        while self._queue and len(batch) < self.max_items:
            job = self._queue.popleft()
            fits = not job.solo and job.options == first.options and seconds + job.seconds <= self.max_seconds
            if fits and self.max_padding is not None:
                padded = (len(batch) + 1) * max(longest, job.seconds)
                fits = padded <= (1 + self.max_padding) * (seconds + job.seconds)
            if fits:
                batch.append(job)
                seconds += job.seconds
                longest = max(longest, job.seconds)
            else:
                kept.append(job)
        self._queue.extendleft(reversed(kept))
        return batch

    def _run_batch(self, batch: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in batch:
            if job.future.cancelled():
                continue
            if now > job.deadline:
                _settle(job, error=DeadlineExceeded("request deadline passed before inference"))
            else:
                live.append(job)
        if not live:
            return
        self._batch_audio_s = sum(job.seconds for job in live)
        started = self._batch_started = time.monotonic()
        try:
            results = self.engine.transcribe_batch([job.audio for job in live], live[0].options)
            if len(results) != len(live):
                raise RuntimeError(f"engine returned {len(results)} results for {len(live)} clips")
        except Exception as error:  # any engine failure is retried, never fatal
            self._batch_done(started)
            log.warning("batch of %d failed: %s", len(live), error)
            self._retry_or_fail(live, error)
            return
        self._batch_done(started)
        self.on_batch(len(live), sum(job.seconds for job in live), time.monotonic() - started)
        for job, result in zip(live, results):
            _settle(job, result=result)

    def _batch_done(self, started: float) -> None:
        ended = time.monotonic()
        self.longest_batch_s = max(self.longest_batch_s, ended - started)
        self._audio_done_s += self._batch_audio_s
        self._model_done_s += ended - started
        self.batches_done += 1
        self._last_batch_end, self._batch_started = ended, None

    def _retry_or_fail(self, jobs: list[Job], error: Exception) -> None:
        retry = []
        for job in jobs:
            job.attempts += 1
            if job.attempts > self.retries:
                _settle(job, error=error)
            else:
                job.solo = True
                retry.append(job)
        if retry:
            time.sleep(self.backoff_s * 2 ** (retry[0].attempts - 1))
            with self._changed:
                self._queue.extendleft(reversed(retry))


def _settle(job: Job, result: Transcript | None = None, error: Exception | None = None) -> None:
    # The waiting handler may have cancelled the job (deadline) meanwhile.
    try:
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
    except InvalidStateError:
        pass


def wait_all(jobs: list[Job], deadline: float) -> list[Transcript | Exception]:
    """Waits for every job; a failed one yields its exception, not a raise.
    The deadline passing raises DeadlineExceeded, also when the inference
    thread found a job expired first: that is the request's deadline, not a
    failed segment (it would turn a 503 into a partial 200 or a 500)."""
    outcomes: list[Transcript | Exception] = []
    for job in jobs:
        remaining = deadline - time.monotonic()
        try:
            outcomes.append(job.future.result(timeout=max(remaining, 0)))
        except TimeoutError:
            raise DeadlineExceeded("request took longer than the per-request deadline") from None
        except DeadlineExceeded:
            raise
        except Exception as error:  # noqa: BLE001 - reported per segment
            outcomes.append(error)
    return outcomes
