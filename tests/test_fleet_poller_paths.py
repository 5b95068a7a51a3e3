"""The health poller's quieter paths, through a real fleet (supervisord, Nginx,
the poller, two pocketsphinx instances, one FunASR instance on the tiny model):
- loading grace: an instance whose /health says "loading" is neither ejected nor restarted
  for `health.max_load_s`, then both. Its model really loads: one file is a named pipe (a
  stalled network mount) the test fills at will;
- FATAL retry: an instance whose model directory is gone ends FATAL and is started again
  every `health.fatal_retry_s`, no sooner; once the directory is back, a retry brings it
  up RUNNING, healthy and answering requests;
- maintenance: a held instance is never ejected, restored, restarted or started, frozen,
  healthy or stopped; once let go the poller handles it again."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fleet_harness import Fleet
from fleet_traffic import Ledger
from machine import wait_for

# isort: split
from fleet import config as fleet_config
from fleet import nginx as fleet_nginx
from fleet.supervisor import Supervisor

pytestmark = pytest.mark.fleet

LOAD_GRACE_S = 8     # health.max_load_s during the loading test (120 otherwise: real loads fit)
FATAL_RETRY_S = 8    # well above the ~0.5 s a start without its model takes to fail
RESTART_AFTER = 8
WATCHED_ROUNDS = RESTART_AFTER + 2  # more than any count that would move the poller


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A copy of the session's tiny model, which the tests move and break."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, model_dir):
    # startretries 0: one failed start is FATAL, so every later start is the poller's.
    tables = {"worker": {"startsecs": 10, "startretries": 0, "graceful_timeout_s": 3, "stopwaitsecs": 6},
              "health": {"interval_s": 0.5, "timeout_s": 0.5, "eject_after": 2, "restore_after": 2,
                         "restart_after": RESTART_AFTER, "fatal_retry_s": FATAL_RETRY_S}}
    fleet = Fleet(tmp_path_factory.mktemp("poller-paths"), weights=[1, 1, 1], active=3, tables=tables,
                  instance_env={2: {"ASR_ENGINE": "funasr", "ASR_MODEL": str(model_dir)}}, min_instances=3)
    with fleet.running(3, timeout=180):
        yield fleet


def rounds(fleet: Fleet, timeout: float = 30) -> Iterator[dict[str, dict]]:
    """Each poller round ending from now on (its fleet-status.json) as {instance name: entry}."""
    path, last, deadline = fleet.run_dir / "fleet-status.json", (), time.monotonic() + timeout
    while True:
        with open(path) as handle:  # one version: the poller replaces the file, never rewrites it
            facts = os.fstat(handle.fileno())
            stamp = (facts.st_ino, facts.st_mtime_ns)
            text = handle.read() if last and stamp != last else ""
        if text:
            deadline = time.monotonic() + timeout
            yield {entry["name"]: entry for entry in json.loads(text)["instances"]}
        last = stamp
        assert time.monotonic() < deadline, f"no poller round for {timeout} s"
        time.sleep(0.02)


def watch(fleet: Fleet, name: str, count: int = WATCHED_ROUNDS) -> list[dict]:
    return [status[name] for status in itertools.islice(rounds(fleet), count)]


def first(fleet: Fleet, name: str, wanted, within: int = 60) -> None:
    """Waits for the first of the next `within` rounds where `wanted(name's entry)` holds."""
    assert any(wanted(status[name]) for status in itertools.islice(rounds(fleet), within)), name


def lines_naming(fleet: Fleet, name: str, since: int) -> list[str]:
    return [line for line in fleet.events()[since:].splitlines() if f" {name}: " in line]


def hold(fleet: Fleet, name: str, held: bool) -> None:
    """In or out of maintenance, as a rolling restart puts an instance there."""
    change = (lambda s: s["maintenance"].append(name)) if held else (lambda s: s["maintenance"].remove(name))
    fleet_nginx.change_state(fleet_config.read_resolved(fleet.run_dir), change)


class SlowFile:
    """A model file on stalled storage: a named pipe a loading worker blocks reading until released."""

    def __init__(self, path: Path):
        self.path, self.content = path, path.read_bytes()
        self.feeder = threading.Thread(target=self._feed, daemon=True)

    def hold(self) -> None:
        self.path.unlink()
        os.mkfifo(self.path)

    def _feed(self) -> None:
        with contextlib.suppress(BrokenPipeError), open(self.path, "wb") as pipe:  # a reader may die mid-read
            pipe.write(self.content)  # open returns once a reader opens the pipe
        (spare := self.path.with_name(".restored")).write_bytes(self.content)
        os.replace(spare, self.path)  # later readers find the file in place

    def release(self) -> None:
        """The next reader gets the file (`close` waits for it)."""
        if self.path.is_fifo() and self.feeder.ident is None:
            self.feeder.start()

    def close(self, wait: float) -> None:
        """Waits `wait` s for a reader, then lets the feeder through itself."""
        if self.feeder.ident and (self.feeder.join(wait) or self.feeder.is_alive()):
            reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self.feeder.join(10)
            os.close(reader)


def test_a_loading_instance_is_left_alone_for_max_load_s_then_ejected_and_restarted(settled, model_dir):
    fleet, name = settled, settled.names[2]
    slow = SlowFile(model_dir / "configuration.json")
    fleet.write_config(tables={"health": {"max_load_s": LOAD_GRACE_S}})
    try:
        fleet.cli("reload")
        wait_for(lambda: Supervisor(fleet.resolved).state(name) == "RUNNING", 60, f"{name} past startsecs")
        master, since = fleet.pid(name), len(fleet.events())
        [worker] = psutil.Process(master).children()
        slow.hold()
        worker.kill()  # Gunicorn's master forks a new worker, which loads the model again
        killed, seen = time.monotonic(), []
        for status in rounds(fleet):
            seen.append((time.monotonic() - killed, status[name]))
            assert time.monotonic() - killed < LOAD_GRACE_S + 40, seen[-1]
            if status[name]["restarting"]:
                break
        print("\n" + "\n".join(f"{t:4.1f} s {e['verdict']:8} {e['reason']}" for t, e in seen))
        # Within the grace: in the upstream, the same process, loading up to its end.
        assert all(e["in_upstream"] and e["supervisor"] == "RUNNING" and not e["restarting"]
                   for t, e in seen if t < LOAD_GRACE_S), seen
        assert any(e["verdict"] == "loading" for t, e in seen if LOAD_GRACE_S - 2 < t < LOAD_GRACE_S), seen
        # Past it: dead, ejected, then restarted (gracefully: it holds nothing).
        ejected = next(t for t, e in seen if not e["in_upstream"])
        assert ejected >= LOAD_GRACE_S and seen[-1][0] > ejected, seen
        why = f"loading for over {LOAD_GRACE_S} s"
        assert [m.split(" ", 1)[1] for m in lines_naming(fleet, name, since)[:2]] == [
            f"{name}: healthy -> ejected from the upstream (dead: 2 bad checks, last: {why})",
            f"{name}: dead ({why}); restarting it"]
        wait_for(lambda: fleet.pid(name) not in (0, master), 60, f"{name} started again")
    finally:
        # Storage delivers again; the real grace is back (a reload waits for a starting instance).
        slow.release()
        fleet.write_config()
        fleet.cli("reload", check=False, timeout=300)
        slow.close(120)
    fleet.wait_settled(3, timeout=120)
    assert (model_dir / "configuration.json").read_bytes() == slow.content


def supervisor_story(fleet: Fleet, name: str, since: int) -> list[tuple[float, str]]:
    """(time, spawned | exited | gave up (FATAL) | success) of `name` in supervisord.log from byte `since`."""
    text = (fleet.run_dir / "logs" / "supervisord.log").read_bytes()[since:].decode()
    pattern = rf"^(\S+ \S+) \w+ (spawned|exited|gave up|success): '?{re.escape(name)}\b"
    return [(datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), what)
            for stamp, what in re.findall(pattern, text, re.MULTILINE)]


def test_a_fatal_instance_is_retried_every_fatal_retry_s_and_back_once_its_model_is(settled, model_dir):
    fleet, name = settled, settled.names[2]
    since, events_since = (fleet.run_dir / "logs" / "supervisord.log").stat().st_size, len(fleet.events())
    model_dir.rename(away := model_dir.with_name("unmounted"))
    try:
        fleet.signal_instance(name, signal.SIGKILL)  # Supervisor starts it again: no model, FATAL
        # FATAL at once, then two retries that fail the same way.
        wait_for(lambda: [w for _, w in supervisor_story(fleet, name, since)].count("gave up") >= 3,
                 60 + 3 * FATAL_RETRY_S, "two failed retries")
    finally:
        away.rename(model_dir)
    wait_for(lambda: "success" in [w for _, w in supervisor_story(fleet, name, since)],
             60 + FATAL_RETRY_S, f"{name} RUNNING again")
    fleet.wait_settled(3, timeout=120)
    story = supervisor_story(fleet, name, since)
    retries = [t for (_, before), (t, what) in itertools.pairwise(story)
               if (before, what) == ("gave up", "spawned")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(retries)]
    failed = [t - start for (start, what), (t, after) in itertools.pairwise(story)
              if what == "spawned" and after == "exited"]
    assert len(retries) >= 3 and story[-1][1] == "success", story
    # Each retry waited out the interval (1 s for the poller's round), though a failed start is quick.
    assert min(gaps) >= FATAL_RETRY_S - 1 and max(failed) < FATAL_RETRY_S - 1, (gaps, failed)
    mine = lines_naming(fleet, name, events_since)
    assert sum(line.endswith("FATAL (failed to start); trying again") for line in mine) == len(retries), mine
    log = (fleet.run_dir / "logs" / f"{name}.log").read_text()
    assert log.count(f"FunASR model '{model_dir}' on cpu: no such model directory") == len(failed) >= 2, log
    # Back in service: healthy on its model, and the front sends it requests.
    assert fleet.instance(name)["health"]["engine"] == "funasr" and fleet.instance(name)["in_upstream"]
    ledger = Ledger("fatal-retry")
    hit = next((o for o in (ledger.post(fleet.url) for _ in range(12)) if o["worker"] == name), None)
    assert hit and hit["status"] == 200, ledger.outcomes
    ledger.check(fleet.run_dir)


def test_an_instance_in_maintenance_is_left_alone_frozen_healthy_or_stopped(settled):
    fleet, name = settled, settled.names[1]
    master, since = fleet.pid(name), len(fleet.events())
    hold(fleet, name, True)
    os.killpg(master, signal.SIGSTOP)
    try:
        # Frozen: judged stuck every round, yet never counted, ejected or killed.
        frozen = watch(fleet, name)
        assert all(e["state"] == "maintenance" and e["consecutive_failures"] == 0 and not e["restarting"]
                   and e["ejected_reason"] is None for e in frozen), frozen
        assert sum(e["verdict"] == "stuck" for e in frozen) >= RESTART_AFTER, frozen
        # Out of maintenance it counts again: ejected after 2 rounds; held again before the restart.
        hold(fleet, name, False)
        first(fleet, name, lambda e: e["ejected_reason"])
        hold(fleet, name, True)
    finally:
        os.killpg(master, signal.SIGCONT)
    # Healthy again but held: it stays ejected (never restored), never restarted.
    healthy = watch(fleet, name)
    assert all(e["ejected_reason"] and not e["restarting"] for e in healthy), healthy
    assert sum(e["verdict"] == "ok" for e in healthy) > 2, healthy
    [line] = lines_naming(fleet, name, since)  # the ejection, and nothing since
    assert f"{name}: healthy -> ejected from the upstream (stuck: 2 bad checks" in line and line.endswith(
        "last: no answer; the process is stopped)"), line
    hold(fleet, name, False)
    first(fleet, name, lambda e: e["in_upstream"])
    assert f"{name}: ejected -> healthy, back in the upstream" in lines_naming(fleet, name, since)[-1]
    assert fleet.pid(name) == master
    # Stopped while held: never started; out of maintenance, started at once.
    since = len(fleet.events())
    hold(fleet, name, True)
    Supervisor(fleet.resolved).stop(name)
    stopped = watch(fleet, name)
    assert all(e["supervisor"] == "STOPPED" and e["state"] == "maintenance" for e in stopped), stopped
    assert lines_naming(fleet, name, since) == []
    hold(fleet, name, False)
    fleet.wait_settled(3, timeout=90)
    assert f"{name}: supervisor says STOPPED; starting it" in lines_naming(fleet, name, since)[0]
    assert fleet.pid(name) not in (0, master)
