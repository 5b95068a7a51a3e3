"""Deadlines that follow the work: how long a recording should take on this
fleet, measured, and the refusal of one that cannot finish in time.

Speed is the time per second of audio (the real-time factor) each worker
measures on the queue's segments (the puller's busy time over their audio),
shared through the store's heartbeats; the fleet's throughput is the sum of
its live workers' 1/RTF. Until a worker has measured 60 s it assumes
`assumed_rtf`, on the slow side, so a fresh fleet refuses too much rather
than too little.

The estimate counts the whole recording as speech: the length is all that
is known before VAD, and a refusal must come before any compute.
"""

from __future__ import annotations

import dataclasses

from app.errors import TooLarge
from app.metrics import Metrics
from app.settings import Settings

# Audio a worker must have measured before its own RTF replaces the assumed one.
MEASURED_AFTER_S = 60.0
# Silero VAD's cost per second of audio on one core (measured ~0.003 on 2 cores;
# 0.01 leaves room for a busy machine).
VAD_RTF = 0.01
# Decoding, writing segments and assembling, whatever the length.
OVERHEAD_S = 10.0
# The deadline is the estimate times this: room for a worker dying mid-way
# (its segments redone after the heartbeat goes stale) and for neighbours.
SAFETY = 1.5


@dataclasses.dataclass(frozen=True)
class Plan:
    expected_s: float
    deadline_s: float
    workers: int


class Pace:
    def __init__(self, settings: Settings, metrics: Metrics, store=None):
        self.settings = settings
        self.metrics = metrics
        self.store = store

    def local_rtf(self) -> float:
        """This worker's speed: on queue work when it has done enough (the
        puller's measure), else on its own requests when there is no queue,
        else the assumed one. Short requests alone would overstate the cost
        of a long recording: each short clip costs a whole Whisper window."""
        queued = self.queue_rtf()
        if queued is not None:
            return max(queued, 1e-4)
        stats = self.metrics.stats()
        if self.store is None and stats["audio_seconds"] >= MEASURED_AFTER_S:
            return max(stats["real_time_factor"], 1e-4)
        return self.settings.assumed_rtf

    def queue_rtf(self) -> float | None:
        """Set by app/jobs/setup.py to the puller's measure."""
        return None

    def fleet(self) -> tuple[int, float]:
        """(live workers, audio seconds the fleet transcribes per second)."""
        if self.store is None:
            return 1, 1 / self.local_rtf()
        live = self.store.live_workers(self.settings.worker_stale_seconds)
        if not live:
            return 1, 1 / self.local_rtf()
        return len(live), sum(1 / max(rtf, 1e-4) for _, rtf in live)

    def plan(self, duration: float, *, fanned: bool) -> Plan:
        """The deadline for a synchronous request of `duration` seconds, or
        TooLarge at once when even the estimate is over the synchronous limit."""
        workers, throughput = self.fleet() if fanned else (1, 1 / self.local_rtf())
        expected = OVERHEAD_S + duration * VAD_RTF + duration / throughput
        needed = expected * SAFETY
        limit = self.settings.max_sync_seconds
        if needed > limit:
            raise TooLarge(
                f"audio of {duration:.0f} s needs about {needed:.0f} s on this fleet ({workers} worker(s), "
                f"{throughput:.1f}x real time), over the {limit:g} s limit for a synchronous request; "
                "submit it as a job: POST /v1/jobs")
        deadline = min(max(self.settings.request_timeout_seconds, needed), limit)
        return Plan(expected, deadline, workers)

    def eta(self, remaining_audio: float) -> float:
        _, throughput = self.fleet()
        return remaining_audio / throughput
