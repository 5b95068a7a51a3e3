"""Busy or stuck: what the health poller concludes about an instance each
round, and how many instances it may take out at once.

A late /health answer is not a failure. Every round ends in one verdict:

  ok       /health answered 200 (busy or idle: `busy` in the body says which)
  loading  503 "loading": Supervisor's business until health.max_load_s
  busy     no answer in time, but the process tree used CPU since the last
           round: a saturated machine, not a dead worker. Never held against it
  stuck    no answer and (almost) no CPU used, or a stopped process (SIGSTOP,
           a debugger); or no answer for longer than the stuck deadline; or an
           answer saying one engine call has run past the stuck deadline
  dead     refused, or an error status ("broken": the model thread is gone)

The stuck deadline is max(stuck_after_s, stuck_factor x the longest engine
call the instance has reported): a model that takes 40 s for a full batch is
not stuck at 41 s. Only stuck and dead rounds count towards eject_after and
restart_after; a busy or ok round clears the count.
"""

from __future__ import annotations

import dataclasses
import time

import psutil

# Below this share of one core since the last round, a process that does not
# answer is not working: a frozen tree uses 0, an idle Gunicorn worker about
# 0.1% (its heartbeat and parent checks), a starved busy one tens of percent.
MIN_CPU_FRACTION = 0.02


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
    # CPU sample of the process tree: (pid, when, cpu seconds).
    sample: tuple[int, float, float] | None = None
    restarting_since: float | None = None
    last_fatal_start: float = 0.0


def tree_cpu(pid: int) -> tuple[float, bool] | None:
    """CPU seconds used by a process and its descendants (reaped children
    included, so the sum never goes back), and whether any is stopped."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return None
    cpu, stopped = 0.0, False
    for proc in procs:
        try:
            times = proc.cpu_times()
            cpu += times.user + times.system + times.children_user + times.children_system
            stopped |= proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
        except psutil.Error:
            pass
    return cpu, stopped


def stuck_deadline(health: dict, track: Track) -> float:
    return max(health["stuck_after_s"], health["stuck_factor"] * track.longest_batch_s)


def judge(track: Track, result: tuple, pid: int | None, health: dict, now: float) -> None:
    """Sets track.verdict and track.reason from one probe result and the
    process tree's CPU since the previous round."""
    outcome, body, error = result
    cpu_fraction, stopped = None, False
    sample = tree_cpu(pid) if pid else None
    if sample is not None:
        cpu, stopped = sample
        if track.sample and track.sample[0] == pid and now > track.sample[1]:
            cpu_fraction = max(cpu - track.sample[2], 0.0) / (now - track.sample[1])
        track.sample = (pid, now, cpu)
    if body is not None:
        track.last_answer, track.body = now, body
        track.longest_batch_s = max(track.longest_batch_s, body.get("longest_batch_s") or 0.0)
    deadline = stuck_deadline(health, track)
    if outcome == "ok":
        running = body.get("batch_running_s") or 0.0
        if running > deadline:
            track.verdict, track.reason = "stuck", f"one engine call running for {running:.0f} s " \
                                                   f"(stuck deadline {deadline:.0f} s)"
        else:
            track.verdict, track.reason = "ok", ""
    elif outcome == "loading":
        track.verdict, track.reason = "loading", error
    elif outcome != "timeout":
        track.verdict, track.reason = "dead", error
    elif stopped:
        track.verdict, track.reason = "stuck", "no answer; the process is stopped"
    elif cpu_fraction is not None and cpu_fraction < MIN_CPU_FRACTION:
        track.verdict, track.reason = "stuck", f"no answer and no CPU used ({cpu_fraction:.1%} of a core)"
    elif now - track.last_answer > deadline:
        track.verdict, track.reason = "stuck", f"no answer for {now - track.last_answer:.0f} s " \
                                               f"(stuck deadline {deadline:.0f} s)"
    else:
        share = "" if cpu_fraction is None else f", {cpu_fraction:.0%} of a core"
        track.verdict, track.reason = "busy", f"answer late ({error}), working{share}"


def count(track: Track, health: dict, now: float) -> None:
    """Updates the consecutive counts from the verdict just reached."""
    if track.verdict != "loading":
        track.loading_since = None
    elif track.loading_since is None:
        track.loading_since = now
    if track.verdict == "ok":
        track.oks, track.bad, track.ever_healthy = track.oks + 1, 0, True
        track.restarting_since = None
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
