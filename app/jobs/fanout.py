"""A synchronous request, planned: short ones stay in-process as before;
long ones go through the shared queue so every worker of the host helps.

Either way the deadline follows the work (`pace.py`), and a recording the
fleet cannot finish within the synchronous limit is refused before any VAD
or model work.

A long request becomes a "sync" work keyed by its X-Request-ID and the
upload's hash: when the worker holding the client dies, Nginx replays the
request on another worker, which finds the same work and waits on it
instead of cutting it again, so segments already done are not redone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time

import numpy as np

from app.audio import SAMPLE_RATE
from app.engines import DecodeOptions
from app.errors import DeadlineExceeded
from app.jobs import prepare
from app.jobs.pace import Pace
from app.jobs.store import SYNC, Store
from app.service import Transcriber, Transcription

log = logging.getLogger(__name__)

WAIT_POLL_S = 0.2


class FanOut:
    def __init__(self, transcriber: Transcriber, pace: Pace, store: Store | None = None, puller=None):
        self.transcriber = transcriber
        self.pace = pace
        self.store = store
        self.puller = puller

    def transcribe(self, samples: np.ndarray, options: DecodeOptions, *, upload: bytes,
                   request_id: str) -> Transcription:
        duration = len(samples) / SAMPLE_RATE
        fanned = self.store is not None and duration >= self.transcriber.settings.fanout_min_seconds
        plan = self.pace.plan(duration, fanned=fanned)
        if not fanned:
            return self.transcriber.transcribe(samples, options, use_vad=True, timeout=plan.deadline_s)
        deadline = time.monotonic() + plan.deadline_s
        key = hashlib.sha256(f"{request_id}|{options}|".encode() + hashlib.sha256(upload).digest()).hexdigest()
        work_id, created = self.store.create(
            kind=SYNC, owner="", key=key, options=dataclasses.asdict(options), filename="", duration=duration,
            holder=self.puller.worker_id, upload=None)
        try:
            # A replayed request whose first worker died before it had
            # queued every segment finds the work still "preparing": it cuts
            # it again (Store.begin_cut drops the part already queued).
            if created or self.store.get(work_id).status == "preparing":
                if not created:
                    log.info("request %s: cutting work %s again, left mid-cut by a worker that died",
                             request_id, work_id)
                prepare.cut_into(self.store, work_id, self.puller.worker_id, self.transcriber, samples)
            else:
                log.info("request %s: joined work %s, left by a worker that died", request_id, work_id)
            self.puller.wake()
            work = self._wait(work_id, deadline)
            return prepare.assemble(self.store.results(work_id), options.language, work.duration)
        finally:
            self.store.delete(work_id)

    def _wait(self, work_id: str, deadline: float):
        while True:
            work = self.store.get(work_id)
            if work is None:
                raise DeadlineExceeded("the recording's work was dropped from the queue; retry")
            if work.status == "running" and work.segments_done + work.segments_failed >= work.segments_total:
                return work
            if time.monotonic() > deadline:
                raise DeadlineExceeded(
                    f"request took longer than its deadline ({work.segments_done} of {work.segments_total} "
                    "segments done); long recordings are safer as jobs: POST /v1/jobs")
            time.sleep(WAIT_POLL_S)
