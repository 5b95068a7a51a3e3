"""Busy or stuck: what the health poller concludes about an instance each
round, and how many instances it may take out at once.

A late /health answer is not a failure. Every round ends in one verdict:

  ok       /health answered 200 (busy or idle: `busy` in the body says which)
  loading  503 "loading": Supervisor's business until health.max_load_s
  busy     no answer in time, but the process tree ran or waited to run on a
           CPU since the last round: a saturated machine, not a dead worker.
           Never held against it
  stuck    no answer and (almost) no time running or runnable, or a stopped
           process (SIGSTOP, a debugger); or no answer for longer than the
           stuck deadline; or an answer saying one engine call has run past
           the stuck deadline
  dead     refused, or an error status ("broken": the model thread is gone)

The stuck deadline is max(stuck_after_s, stuck_factor x the longest engine
call the instance has reported) and, for the call running now, stuck_factor
x what its audio should take at the instance's speed so far: a model that
takes 40 s for a full batch is not stuck at 41 s. Only stuck and dead
rounds count towards eject_after and restart_after; a busy or ok round
clears the count.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import psutil

# Below this share of the wall time spent running or waiting for a CPU
# (summed over the tree's threads) since the last round, a process that does
# not answer is not working: a frozen or deadlocked tree spends 0, an idle
# Gunicorn worker about 0.1% (its heartbeat and parent checks). Waiting counts:
# on a saturated machine a worker that wants a CPU is starved, not stuck, even
# when it gets very little CPU.
MIN_ACTIVE_FRACTION = 0.02


@dataclasses.dataclass
class Track:
    """What the poller remembers about one instance."""

    bad: int = 0          # consecutive stuck or dead rounds
    oks: int = 0          # consecutive ok rounds
    verdict: str = "unknown"
    reason: str = ""
    ever_healthy: bool = False
    first_seen: float = dataclasses.field(default_factory=time.monotonic)
    last_answer: float = dataclasses.field(default_factory=time.monotonic)
    loading_since: float | None = None
    longest_batch_s: float = 0.0
    body: dict | None = None
    checked: str = ""
    # Activity sample of the process tree: (pid, when, {thread id: ns}).
    sample: tuple[int, float, dict[int, int]] | None = None
    restarting_since: float | None = None
    last_fatal_start: float = 0.0


def tree_activity(pid: int) -> tuple[dict[int, int], bool] | None:
    """Nanoseconds each thread of a process and its descendants has spent
    running or runnable (/proc/<pid>/task/<tid>/schedstat), and whether any
    process is stopped. None when the process is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return None
    threads, stopped = {}, False
    for proc in procs:
        try:
            stopped |= proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
            tids = [t.id for t in proc.threads()]
        except psutil.Error:
            continue
        for tid in tids:
            try:
                run_ns, wait_ns, _ = Path(f"/proc/{proc.pid}/task/{tid}/schedstat").read_text().split()
                threads[tid] = int(run_ns) + int(wait_ns)
            except (OSError, ValueError):
                pass
    return threads, stopped


def active_fraction(before: dict[int, int], after: dict[int, int], seconds: float) -> float:
    """Share of `seconds` the threads spent running or runnable: a thread
    seen twice counts its growth, a new one all of it, a gone one nothing
    (so the sum never goes back)."""
    spent = sum(ns - before.get(tid, 0) for tid, ns in after.items() if ns >= before.get(tid, 0))
    return spent / 1e9 / seconds


def stuck_deadline(health: dict, track: Track) -> float:
    return max(health["stuck_after_s"], health["stuck_factor"] * track.longest_batch_s)


def answered(track: Track, body: dict, when: float) -> None:
    """Records an answer, in time or late (a late one still shows the
    instance alive: the poller asks again patiently after a timeout)."""
    track.last_answer, track.body = max(track.last_answer, when), body
    track.longest_batch_s = max(track.longest_batch_s, body.get("longest_batch_s") or 0.0)


def judge(track: Track, result: tuple, pid: int | None, health: dict, now: float) -> None:
    """Sets track.verdict and track.reason from one probe result and what
    the process tree did since the previous round."""
    outcome, body, error = result
    active, stopped = None, False
    sample = tree_activity(pid) if pid else None
    if sample is not None:
        threads, stopped = sample
        if track.sample and track.sample[0] == pid and now > track.sample[1]:
            active = active_fraction(track.sample[2], threads, now - track.sample[1])
        track.sample = (pid, now, threads)
    if body is not None:
        answered(track, body, now)
    deadline = stuck_deadline(health, track)
    if outcome == "ok":
        running = body.get("batch_running_s") or 0.0
        # A big batch may take longer than any before it: what its audio
        # should take at the speed seen so far counts as well.
        expected = (body.get("batch_audio_s") or 0.0) * (body.get("model_s_per_audio_s") or 0.0)
        deadline = max(deadline, health["stuck_factor"] * expected)
        if running > deadline:
            track.verdict = "stuck"
            track.reason = f"one engine call running for {running:.0f} s (stuck deadline {deadline:.0f} s)"
        else:
            track.verdict, track.reason = "ok", ""
    elif outcome == "loading":
        track.verdict, track.reason = "loading", error
    elif outcome != "timeout":
        track.verdict, track.reason = "dead", error
    elif stopped:
        track.verdict, track.reason = "stuck", "no answer; the process is stopped"
    elif active is not None and active < min(MIN_ACTIVE_FRACTION,
                                             0.5 * health["timeout_s"] / health["interval_s"]):
        # (A probe that timed out for want of a CPU kept a thread runnable for
        # timeout_s: a starved worker is always above this bound.)
        track.verdict = "stuck"
        track.reason = f"no answer, and its threads neither ran nor waited to run ({active:.1%} of the time)"
    elif now - track.last_answer > deadline:
        track.verdict = "stuck"
        track.reason = f"no answer for {now - track.last_answer:.0f} s (stuck deadline {deadline:.0f} s)"
    else:
        share = "" if active is None else f" ({active:.0%} of a CPU running or runnable)"
        track.verdict, track.reason = "busy", f"answer late ({error}), working{share}"


def count(track: Track, health: dict, now: float) -> None:
    """Updates the consecutive counts from the verdict just reached."""
    if track.verdict != "loading":
        track.loading_since = None
    elif track.loading_since is None:
        track.loading_since = now
    if track.verdict == "ok":
        track.oks, track.bad, track.ever_healthy = track.oks + 1, 0, True
        if track.oks >= health["restore_after"]:
            track.restarting_since = None  # back, as the poller restores it
    elif track.verdict == "busy":
        track.oks, track.bad = 0, 0
    elif track.verdict in ("stuck", "dead"):
        # A worker that never became healthy is Supervisor's business until
        # max_load_s: it may still be starting.
        if track.ever_healthy or now - track.first_seen > health["max_load_s"]:
            track.bad, track.oks = track.bad + 1, 0
    elif track.loading_since is not None and now - track.loading_since > health["max_load_s"]:
        track.verdict, track.reason = "dead", f"loading for over {health['max_load_s']} s"
        track.bad, track.oks = track.bad + 1, 0


def eject_blocker(name: str, active: list[str], out: set[str], tracks: dict[str, Track]) -> str | None:
    """None when `name` may leave the upstream now, else why not.

    One instance out at a time (ejected or in maintenance), and never the
    last one serving: the failures that hit several instances at once (a
    saturated or stalled machine, a bad deploy) are the ones where taking
    them all out turns a slowdown into an outage. A stuck instance left in
    the upstream meanwhile costs little: it is restarted anyway
    (`restart_blocker`), and Nginx replays what it held on another instance."""
    others_out = sorted(out - {name})
    if others_out:
        return f"{', '.join(others_out)} already out; one at a time"
    serving = [n for n in active if n != name and n not in out
               and tracks.get(n) is not None and tracks[n].verdict in ("ok", "busy")]
    if not serving:
        return "no other instance is serving"
    return None


def restart_blocker(name: str, tracks: dict[str, Track]) -> str | None:
    """None when `name` may be restarted now: one restart at a time. A
    restart is only ever of a stuck or dead instance, which serves nothing,
    so it needs no serving sibling; but two at once would be a second
    chance to be wrong about the machine rather than the instance."""
    others = sorted(n for n, t in tracks.items() if n != name and t.restarting_since is not None)
    return f"{', '.join(others)} still restarting; one at a time" if others else None
