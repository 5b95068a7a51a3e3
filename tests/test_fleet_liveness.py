"""The poller's judgement of one instance (scripts/fleet/liveness.py) against
real processes: one that works but answers late is busy, a frozen or idle
one that does not answer is stuck; and its one-at-a-time rules."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import fleet_harness  # noqa: F401 - puts scripts/ on sys.path, for the fleet's modules below
import pytest
from machine import wait_for

# isort: split
from fleet import liveness
from fleet.supervisor import probe

pytestmark = pytest.mark.unit

HEALTH = {"interval_s": 0.5, "timeout_s": 0.2, "stuck_after_s": 60, "stuck_factor": 3, "max_load_s": 30,
          "restore_after": 2}

# A process holding a listening socket it never accepts from: connections
# queue in the kernel and /health times out, like a worker that cannot
# answer. It spins on the CPU ("spin") or sleeps ("sleep").
SILENT = """
import socket, sys, time
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(64)
print(sock.getsockname()[1], flush=True)
while True:
    if sys.argv[1] == "sleep":
        time.sleep(1)
"""


@pytest.fixture()
def silent():
    procs = []

    def start(mode: str) -> tuple[subprocess.Popen, int]:
        proc = subprocess.Popen([sys.executable, "-c", SILENT, mode], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc, int(proc.stdout.readline())

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


def _rounds(track: liveness.Track, pid: int, port: int, count: int) -> list[str]:
    verdicts = []
    for _ in range(count):
        result = probe(port, HEALTH["timeout_s"])
        assert result[0] == "timeout", result
        liveness.judge(track, result, pid, HEALTH, time.monotonic())
        liveness.count(track, HEALTH, time.monotonic())
        verdicts.append(track.verdict)
        time.sleep(HEALTH["interval_s"] - HEALTH["timeout_s"])
    return verdicts


def test_a_late_answer_from_a_working_process_is_busy_and_never_counts(silent):
    proc, port = silent("spin")
    track = liveness.Track(ever_healthy=True)
    # The first round has no earlier sample to compare with: busy, not stuck.
    verdicts = _rounds(track, proc.pid, port, 4)
    assert verdicts == ["busy"] * 4, (verdicts, track.reason)
    assert track.bad == 0 and "running or runnable" in track.reason


def test_a_frozen_process_is_stuck_at_once_and_an_idle_silent_one_from_the_second_round(silent):
    frozen, frozen_port = silent("spin")
    frozen.send_signal(signal.SIGSTOP)
    wait_for(lambda: liveness.tree_activity(frozen.pid)[1], 5, "the process to show as stopped")
    track = liveness.Track(ever_healthy=True)
    assert _rounds(track, frozen.pid, frozen_port, 3) == ["stuck"] * 3
    assert track.bad == 3 and "stopped" in track.reason

    sleeping, sleeping_port = silent("sleep")
    track = liveness.Track(ever_healthy=True)
    assert _rounds(track, sleeping.pid, sleeping_port, 3) == ["busy", "stuck", "stuck"], track.reason
    assert "neither ran nor waited" in track.reason


def test_a_process_waiting_for_a_cpu_is_active_even_when_it_barely_runs(silent):
    """Activity counts time spent runnable: on a saturated machine a starved
    worker is not stuck. Four spinning processes pinned to one CPU each get
    a quarter of it, yet each is runnable all the time."""
    procs = [silent("spin")[0] for _ in range(4)]
    for proc in procs:
        subprocess.run(["taskset", "-p", "-c", "0", str(proc.pid)], check=True, capture_output=True)
    before = liveness.tree_activity(procs[0].pid)[0]
    time.sleep(1)
    after = liveness.tree_activity(procs[0].pid)[0]
    assert liveness.active_fraction(before, after, 1.0) > 0.5


def test_the_stuck_deadline_follows_the_longest_engine_call():
    track = liveness.Track(ever_healthy=True)
    now = time.monotonic()
    liveness.judge(track, ("ok", {"longest_batch_s": 40.0, "batch_running_s": 100.0}, ""), None, HEALTH, now)
    assert track.verdict == "ok"  # deadline max(60, 3 x 40) = 120 s
    liveness.judge(track, ("ok", {"longest_batch_s": 40.0, "batch_running_s": 130.0}, ""), None, HEALTH, now)
    assert track.verdict == "stuck" and "130 s" in track.reason
    # A bigger batch than any before: 240 s of audio at 0.25 s per second
    # should take 60 s, so it has 3 x 60 = 180 s.
    big = {"longest_batch_s": 40.0, "batch_running_s": 170.0, "batch_audio_s": 240.0,
           "model_s_per_audio_s": 0.25}
    liveness.judge(track, ("ok", big, ""), None, HEALTH, now)
    assert track.verdict == "ok"
    liveness.judge(track, ("ok", dict(big, batch_running_s=190.0), ""), None, HEALTH, now)
    assert track.verdict == "stuck" and "deadline 180 s" in track.reason
    # No answer at all past the deadline is stuck too, however busy the CPU.
    track.last_answer = now - 121
    liveness.judge(track, ("timeout", None, "timed out"), None, HEALTH, now)
    assert track.verdict == "stuck" and "no answer for 121 s" in track.reason


def test_a_late_answer_counts_as_an_answer():
    track = liveness.Track(ever_healthy=True, longest_batch_s=1.0)
    now = time.monotonic()
    track.last_answer = now - 100
    liveness.answered(track, {"longest_batch_s": 1.0, "busy": True}, now - 1)
    liveness.judge(track, ("timeout", None, "timed out"), None, HEALTH, now)
    assert track.verdict == "busy"


def _tracks(**verdicts: str) -> dict[str, liveness.Track]:
    return {name: liveness.Track(verdict=verdict) for name, verdict in verdicts.items()}


def test_one_instance_out_at_a_time_and_never_the_last_one_serving():
    names = ["a", "b", "c"]
    tracks = _tracks(a="ok", b="stuck", c="stuck")
    assert liveness.eject_blocker("b", names, set(), tracks) is None
    assert "b already out" in liveness.eject_blocker("c", names, {"b"}, tracks)
    # A busy instance serves: the stuck one may go.
    tracks = _tracks(a="busy", b="stuck")
    assert liveness.eject_blocker("b", ["a", "b"], set(), tracks) is None
    # Every other instance stuck or dead: nothing is taken out.
    tracks = _tracks(a="stuck", b="dead")
    assert liveness.eject_blocker("a", ["a", "b"], set(), tracks) == "no other instance is serving"
    # Restarts: one at a time, whoever is serving.
    tracks = _tracks(a="stuck", b="stuck")
    assert liveness.restart_blocker("a", tracks) is None
    tracks["a"].restarting_since = time.monotonic()
    assert "a still restarting" in liveness.restart_blocker("b", tracks)


def test_busy_and_loading_rounds_never_count_towards_ejection():
    track = liveness.Track(ever_healthy=True)
    now = time.monotonic()
    for verdict in ["stuck", "busy", "stuck", "loading", "stuck"]:
        track.verdict = verdict
        liveness.count(track, HEALTH, now)
    assert track.bad == 2  # busy cleared the count; loading left it alone
    track.verdict = "ok"
    liveness.count(track, HEALTH, now)
    assert track.bad == 0 and track.oks == 1
    # An instance that never became healthy is Supervisor's business for max_load_s.
    fresh = liveness.Track(verdict="dead")
    liveness.count(fresh, HEALTH, time.monotonic())
    assert fresh.bad == 0
