"""The puller: one thread per worker that takes segments from the shared
queue into this worker's batcher and writes the results back.

It claims only when its own batcher has room (at most ASR_PULL_MAX_ITEMS
pulled segments in hand), so pulled work never starves the worker's own short
requests, which go straight to the batcher as before. Its heartbeat is the
lease on what it holds: a worker killed with -9 stops beating, and after
`worker_stale_seconds` any other puller puts its segments back in the queue.
A queued job is prepared (decoded, cut) on a side thread when this worker
has nothing else to do, so the heartbeat never waits on ffmpeg or VAD.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import time
import uuid

from app.batching import Job
from app.engines import DecodeOptions
from app.errors import Overloaded
from app.jobs import codec, prepare
from app.jobs.pace import Pace
from app.jobs.store import Claimed, Outcome, Store
from app.service import Transcriber

log = logging.getLogger(__name__)

POLL_S = 0.1
HEARTBEAT_S = 1.0
SWEEP_S = 10.0
# A segment whose claimer died this many times fails instead of killing more workers.
MAX_ATTEMPTS = 3
# A sync work whose waiting worker has been gone this long is abandoned
# (Nginx replays a request at once; this is far longer).
ORPHAN_S = 120.0
# Pulled segments wait in the batcher this long at most: a lease, not a client deadline.
SEGMENT_DEADLINE_S = 3600.0


class Puller:
    def __init__(self, transcriber: Transcriber, store: Store, pace: Pace):
        self.transcriber = transcriber
        self.store = store
        self.pace = pace
        self.settings = transcriber.settings
        self.worker_id = f"{self.settings.instance_name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.pulled = 0  # segments this worker transcribed for the queue
        # Its measured speed on queue work: wall time with segments in hand
        # per second of their audio (full windows, unlike short requests,
        # whose clips each cost a whole Whisper window).
        self.pulled_seconds = self.busy_seconds = 0.0
        self._busy_since: float | None = None
        self._pending: list[tuple[Claimed, Job]] = []
        self._wake = threading.Event()
        self._preparing: threading.Thread | None = None
        self._beat = self._swept = 0.0

    def start(self) -> None:
        threading.Thread(target=self._run, name="puller", daemon=True).start()
        atexit.register(self.stop)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Hands back what this worker holds, so nobody waits for its lease."""
        try:
            self.store.forget_worker(self.worker_id)
        except Exception as error:  # noqa: BLE001 - at exit; the lease runs out on its own anyway
            log.debug("could not hand back claims at exit: %s", error)

    def _run(self) -> None:
        while not self.transcriber.wait_ready(60):
            if self.transcriber.state != "loading":
                return  # the model never loaded: this worker takes no work
        while True:
            try:
                self._step()
            except Exception:  # a store hiccup (locked, disk) must not end the thread
                log.exception("puller step failed")
                time.sleep(1)
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _step(self) -> None:
        now = time.monotonic()
        if now - self._beat >= HEARTBEAT_S:
            self.store.heartbeat(self.worker_id, self.settings.instance_name, self.pace.local_rtf())
            self._beat = now
        self._write_back()
        self._claim()
        if now - self._swept >= SWEEP_S:
            self._swept = now
            for work_id in self.store.sweep(stale_s=self.settings.worker_stale_seconds, orphan_s=ORPHAN_S,
                                            retention_s=self.settings.job_retention_seconds):
                prepare.finalize(self.store, work_id)
        if not self._pending and (self._preparing is None or not self._preparing.is_alive()):
            taken = self.store.claim_preparation(self.worker_id, self.settings.worker_stale_seconds)
            if taken:
                self._preparing = threading.Thread(target=self._prepare, args=taken, name="prepare", daemon=True)
                self._preparing.start()

    def _write_back(self) -> None:
        done = [(claimed, job) for claimed, job in self._pending if job.future.done()]
        if not done:
            return
        outcomes = []
        for claimed, job in done:
            error = job.future.exception()
            if error is None:
                outcomes.append(Outcome(claimed.id, codec.dump_transcript(job.future.result())))
            else:
                outcomes.append(Outcome(claimed.id, None, str(error)[:300]))
        self._pending = [item for item in self._pending if not item[1].future.done()]
        self.pulled += len(outcomes)
        self.pulled_seconds += sum(job.seconds for _, job in done)
        if not self._pending and self._busy_since is not None:
            self.busy_seconds += time.monotonic() - self._busy_since
            self._busy_since = None
        for work_id in self.store.complete(self.worker_id, outcomes):
            prepare.finalize(self.store, work_id)

    def _claim(self) -> None:
        batcher = self.transcriber.batcher
        room = self.settings.pull_max_items - len(self._pending)
        if room <= 0 or batcher.depth >= batcher.max_items:
            return
        claimed = self.store.claim(self.worker_id, room, self.settings.worker_stale_seconds, MAX_ATTEMPTS)
        deadline = time.monotonic() + SEGMENT_DEADLINE_S
        for item in claimed:
            try:
                [job] = batcher.submit([codec.from_pcm(item.pcm)], _options(item.options), deadline)
            except Overloaded:  # the worker's own requests filled the queue meanwhile
                self.store.release(self.worker_id, [item.id])
                continue
            # Woken when it is done: the next segment is claimed at once.
            job.future.add_done_callback(lambda _: self._wake.set())
            self._pending.append((item, job))
            if self._busy_since is None:
                self._busy_since = time.monotonic()

    def rtf(self) -> float | None:
        """Seconds per audio second on queue work; None until 60 s measured."""
        return self.busy_seconds / self.pulled_seconds if self.pulled_seconds >= 60 else None

    def _prepare(self, work, upload: bytes) -> None:
        try:
            prepare.prepare_job(self.transcriber, self.store, work, upload, self.worker_id)
        except Exception:  # the job fails with a reason, the worker lives on
            log.exception("preparing job %s failed", work.id)
            self.store.finish(work.id, "failed", error="internal error while preparing the job, see the worker log")
        self.wake()


def _options(raw: dict) -> DecodeOptions:
    # Whatever DecodeOptions holds today; keys it lacks (a job's response_format) stay behind.
    return DecodeOptions(**{f.name: raw[f.name] for f in dataclasses.fields(DecodeOptions) if f.name in raw})
