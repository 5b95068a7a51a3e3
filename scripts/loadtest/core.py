"""The load test's core: N users send recordings until the run's bounds end it.

`run_load(LoadConfig(...)) -> LoadResult` is what the command line and the
benchmarks call; nothing here prints (the progress display is opt-in).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import threading
import time
import uuid

import requests

from .client import Sample, send
from .config import AudioFile, LoadConfig, audio_paths, check_target, load_audio
from .monitor import Progress, ResourceSampler


@dataclasses.dataclass
class LoadResult:
    config: LoadConfig
    started_at: str
    elapsed: float
    samples: list[Sample]
    resources: list[dict]
    gpus: dict  # index -> {"name", "memory_total_mb"}
    warmup: list[Sample]
    stopped_by: str
    files: list[AudioFile]
    run_id: str


class _Run:
    """The state the user threads share: the ticket counter, the stop flag and the samples."""

    def __init__(self, config: LoadConfig, files: list[AudioFile], t0: float, run_id: str):
        self.config = config
        self.run_id = run_id
        self.files = files
        self.t0 = t0
        self.url = check_target(config.url, config.allow_remote) + config.endpoint
        per_user = config.per_user
        self.planned = None if per_user is None else min(per_user * config.concurrency, config.max_requests)
        self.deadline = t0 + min(config.duration or math.inf, config.max_duration)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.tickets = itertools.count()
        self.samples: list[Sample] = []
        self.learned_seconds: dict[str, float] = {}
        self.done = 0
        self.failed = 0
        self.stopped_by = ""

    def _stop(self, reason: str) -> None:
        with self.lock:
            self.stopped_by = self.stopped_by or reason
        self.stop.set()

    def _ticket(self) -> int | None:
        """The next request's index, or None when the run is over."""
        if self.stop.is_set():
            return None
        if time.monotonic() >= self.deadline:
            self._stop("duration" if self.config.duration else "max_duration")
            return None
        index = next(self.tickets)
        if index >= self.config.max_requests:
            self._stop("max_requests")
            return None
        return index

    def user(self, user: int) -> None:
        session = requests.Session()
        per_user = self.config.per_user
        try:
            for k in itertools.count():
                if per_user is not None and k >= per_user:
                    return
                index = self._ticket()
                if index is None:
                    return
                audio = self.files[(user + k) % len(self.files)]
                sample = send(session, self.config, self.url, audio, index=index, user=user,
                              t0=self.t0, learned=self.learned_seconds, run_id=self.run_id)
                with self.lock:
                    self.samples.append(sample)
                    self.done += 1
                    self.failed += not sample.ok
                if self.config.delay and self.stop.wait(self.config.delay):
                    return
        finally:
            session.close()


def _warm_up(config: LoadConfig, files: list[AudioFile], url: str, run_id: str) -> list[Sample]:
    count = min(config.warmup, config.max_requests)
    if not count:
        return []
    out: list[Sample] = []
    lock = threading.Lock()
    tickets = iter(range(count))

    def user(u: int) -> None:
        with requests.Session() as session:
            for i in tickets:  # shared iterator: each index once
                sample = send(session, config, url, files[i % len(files)], index=-1 - i, user=u,
                              t0=time.monotonic(), run_id=run_id)
                with lock:
                    out.append(sample)

    threads = [threading.Thread(target=user, args=(u,), daemon=True)
               for u in range(min(count, config.concurrency))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def run_load(config: LoadConfig) -> LoadResult:
    """Runs one bounded load test and returns every request's outcome; ValueError for a bad config."""
    config.validate()
    files: list[AudioFile] = []
    for item in config.files:
        files.extend([item] if isinstance(item, AudioFile) else load_audio(audio_paths(item)))
    if not files:
        raise ValueError("no audio files to send")
    url = check_target(config.url, config.allow_remote) + config.endpoint
    run_id = uuid.uuid4().hex[:8]
    warmup = _warm_up(config, files, url, run_id)

    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    state = _Run(config, files, t0, run_id)
    sampler = ResourceSampler(config.sample_interval, t0)
    sampler.start()
    progress = Progress(state) if config.progress else None
    if progress:
        progress.start()
    users = [threading.Thread(target=state.user, args=(u,), name=f"loadtest-user-{u}", daemon=True)
             for u in range(config.concurrency)]
    for thread in users:
        thread.start()
    # No request starts after the deadline and each waits at most --timeout per socket read, so
    # users end soon after it; past the grace below we stop waiting (they are daemons) and report.
    give_up = state.deadline + 2 * config.timeout + 5
    try:
        for thread in users:
            while thread.is_alive() and time.monotonic() < give_up:
                thread.join(0.2)
    except KeyboardInterrupt:
        state._stop("interrupted")
        give_up = time.monotonic() + config.timeout + 1
        for thread in users:
            thread.join(max(0.0, give_up - time.monotonic()))
    if any(thread.is_alive() for thread in users):
        state._stop("max_duration")
    elapsed = time.monotonic() - t0
    with state.lock:
        samples = sorted(state.samples, key=lambda s: s.index)
    sampler.stop.set()
    sampler.join(10)
    if progress:
        progress.stop.set()
        progress.join(5)

    if not state.stopped_by:
        state.stopped_by = "requests" if config.per_user is not None else "duration"
    for sample in samples:  # a file whose length only a later response told
        if sample.audio_seconds is None:
            sample.audio_seconds = state.learned_seconds.get(sample.file)
    return LoadResult(config=config, started_at=started_at, elapsed=elapsed, samples=samples,
                      resources=sampler.samples, gpus=sampler.gpus, warmup=warmup,
                      stopped_by=state.stopped_by, files=files, run_id=run_id)
