"""The store's interface: what the fan-out, the jobs API and the puller need.

Everything outside `sqlite_store.py` codes against `Store`, so a fleet that
spans several hosts can put the same records in a server database (see
docs/architecture.md, "Long recordings") without touching the callers.

A work is one recording: `kind` "sync" (a client waits on the connection)
or "job" (POST /v1/jobs). Its statuses: queued (a job whose upload waits to
be decoded and cut), preparing (a worker is cutting it; the segments cut so
far are queued already), running (every segment queued or in progress),
then succeeded, failed or cancelled.
"""

from __future__ import annotations

import abc
import dataclasses

SYNC, JOB = "sync", "job"
# Claimed first to last: a client holding a connection goes before a job.
PRIORITY = {SYNC: 0, JOB: 1}
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


@dataclasses.dataclass(frozen=True)
class Work:
    id: str
    kind: str
    owner: str
    status: str
    options: dict
    filename: str
    duration: float
    segments_total: int
    segments_done: int
    segments_failed: int
    audio_total: float
    audio_done: float
    created: float
    started: float | None
    finished: float | None
    error: str | None
    result: str | None


@dataclasses.dataclass(frozen=True)
class NewSegment:
    """One unit of work: a VAD window (its speech spans in the recording)
    as 16 kHz mono int16 PCM."""

    spans: list[tuple[float, float]]
    pcm: bytes
    seconds: float


@dataclasses.dataclass(frozen=True)
class Claimed:
    id: int
    work_id: str
    options: dict
    pcm: bytes


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a worker hands back for a claimed segment: a result, or the error."""

    segment_id: int
    result: str | None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Done:
    """A finished segment, in recording order, for assembly."""

    index: int
    spans: list[tuple[float, float]]
    result: str | None
    error: str | None


class Store(abc.ABC):
    """Every method is one transaction and safe from any thread or process."""

    # --- workers -------------------------------------------------------------
    @abc.abstractmethod
    def heartbeat(self, worker_id: str, name: str, rtf: float) -> None:
        """Says this worker is alive, with its measured real-time factor."""

    @abc.abstractmethod
    def live_workers(self, stale_s: float) -> list[tuple[str, float]]:
        """(name, real-time factor) of every worker seen within stale_s."""

    @abc.abstractmethod
    def forget_worker(self, worker_id: str) -> None:
        """A worker stopping cleanly: its claims go back to the queue at once."""

    # --- works ---------------------------------------------------------------
    @abc.abstractmethod
    def create(self, *, kind: str, owner: str, key: str, options: dict, filename: str,
               duration: float, holder: str, upload: bytes | None) -> tuple[str, bool]:
        """A new work, or the unfinished one already made under `key` (a
        request Nginx replayed): (id, created)."""

    # A work is cut while its segments are already being claimed: the
    # holder adds them chunk by chunk as VAD goes, so siblings start at once.
    @abc.abstractmethod
    def begin_cut(self, work_id: str, holder: str) -> bool:
        """Takes a queued or preparing work for cutting, dropping any part a
        cutter that died had added; False when it is gone or already cut."""

    @abc.abstractmethod
    def add_segments(self, work_id: str, holder: str, segments: list[NewSegment]) -> bool:
        """Queues the next segments of a work this holder is cutting; False
        when it is gone (cancelled) or another holder took the cut over."""

    @abc.abstractmethod
    def end_cut(self, work_id: str, holder: str) -> bool | None:
        """Marks the work running: every segment is queued. True when every
        segment is already done (the caller assembles it), None when the
        work is gone or no longer this holder's."""

    @abc.abstractmethod
    def get(self, work_id: str) -> Work | None: ...

    @abc.abstractmethod
    def list(self, owner: str, kind: str, limit: int) -> list[Work]:
        """The owner's most recent works of that kind, newest first."""

    @abc.abstractmethod
    def results(self, work_id: str) -> list[Done]: ...

    @abc.abstractmethod
    def finish(self, work_id: str, status: str, *, result: str | None = None,
               error: str | None = None) -> bool:
        """Ends an unfinished work (once: False when it had already ended);
        drops its segments and upload."""

    @abc.abstractmethod
    def cancel(self, work_id: str) -> bool:
        """Cancels and deletes the work's data, keeping a tombstone; False
        when it had already finished."""

    @abc.abstractmethod
    def delete(self, work_id: str) -> None: ...

    # --- the queue -----------------------------------------------------------
    @abc.abstractmethod
    def claim(self, worker_id: str, limit: int, stale_s: float, max_attempts: int) -> list[Claimed]:
        """Takes up to `limit` queued segments, sync before job, oldest first.
        Segments held by a worker not seen within stale_s are queued again
        first; one claimed max_attempts times fails instead (it kills workers)."""

    @abc.abstractmethod
    def release(self, worker_id: str, segment_ids: list[int]) -> None:
        """Puts claimed segments back (the batcher was full)."""

    @abc.abstractmethod
    def complete(self, worker_id: str, outcomes: list[Outcome]) -> list[str]:
        """Writes results of segments this worker still holds (a result is
        written once; a late one from a worker that lost its claim is
        dropped). Returns the works that have every segment done."""

    @abc.abstractmethod
    def claim_preparation(self, worker_id: str, stale_s: float) -> tuple[Work, bytes] | None:
        """Takes the oldest queued job (or one whose preparer died) and its upload."""

    # --- upkeep --------------------------------------------------------------
    @abc.abstractmethod
    def sweep(self, *, stale_s: float, orphan_s: float, retention_s: float) -> list[str]:
        """Deletes finished jobs past retention and sync works whose waiting
        worker is gone; returns running works with every segment done (their
        finisher died before assembling)."""
