"""Issue 13: the health poller tells busy from stuck on a saturated machine.

Three real pocketsphinx instances behind Nginx under supervisord, the poller
every 0.5 s with a 0.1 s timeout. CPU hogs saturate both cores, the one
instance left serving takes all the traffic at the lowest priority (nice 19:
starved, so its /health answers come late, yet it works), and its two
siblings are frozen with SIGSTOP at the same moment. The busy instance is
kept (same processes, never ejected, never restarted, judged "busy", never
"stuck"); the frozen ones are each taken out and restarted, one at a time,
never both out at once.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading

import psutil
import pytest
from fleet_harness import CLIPS, Fleet
from fleet_traffic import Ledger, Stream
from machine import wait_for

pytestmark = pytest.mark.fleet

HOGS = 6


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, audio_dir):
    tables = {"worker": {"request_timeout_s": 60, "graceful_timeout_s": 3, "stopwaitsecs": 6},
              "health": {"interval_s": 0.5, "timeout_s": 0.1, "eject_after": 2, "restore_after": 2,
                         "restart_after": 4}}
    fleet = Fleet(tmp_path_factory.mktemp("poller"), weights=[1, 1, 1], active=3, tables=tables,
                  min_instances=3)
    with fleet.running(3):
        yield fleet


@contextlib.contextmanager
def cpu_hogs(count: int):
    """`count` processes spinning on the CPU at normal priority."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def starve(pids: set[int]) -> None:
    """Lowest CPU priority for every thread of these processes (threads
    started later inherit it). A normal user cannot undo this; the fleet
    is the test module's own."""
    for pid in pids:
        for thread in psutil.Process(pid).threads():
            os.setpriority(os.PRIO_PROCESS, thread.id, 19)


def _tree(fleet: Fleet, name: str) -> set[int]:
    master = psutil.Process(fleet.pid(name))
    return {master.pid} | {child.pid for child in master.children(recursive=True)}


def _events(fleet: Fleet, since: str) -> list[tuple[str, str]]:
    """(time, message) of every fleet event at or after `since`."""
    out = []
    for line in fleet.events().splitlines():
        stamp, _, message = line.partition(" ")
        if stamp >= since:
            out.append((stamp, message))
    return out


def test_on_a_saturated_machine_the_busy_instance_is_kept_and_the_stuck_ones_restarted_one_at_a_time(fleet):
    busy, frozen = fleet.names[0], fleet.names[1:3]
    busy_tree = _tree(fleet, busy)
    frozen_pids = {name: fleet.pid(name) for name in frozen}
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    seen = {"verdicts": set(), "out_at_once": 0, "restarting_at_once": 0}
    stop = threading.Event()

    def watch_status() -> None:
        # What the poller concluded, every round: its status file.
        while not stop.is_set():
            try:
                status = json.loads((fleet.run_dir / "fleet-status.json").read_text())
            except (OSError, ValueError):
                continue
            by_name = {i["name"]: i for i in status["instances"]}
            seen["verdicts"].add(by_name[busy]["verdict"])
            out = [n for n in fleet.names if by_name[n]["state"] in ("ejected", "maintenance")]
            seen["out_at_once"] = max(seen["out_at_once"], len(out))
            seen["restarting_at_once"] = max(seen["restarting_at_once"],
                                             sum(by_name[n]["restarting"] for n in fleet.names))
            stop.wait(0.1)

    watcher = threading.Thread(target=watch_status, daemon=True)
    ledger = Ledger("saturated")
    with Stream(fleet.url, concurrency=4, minimum=12, ledger=ledger, clips=CLIPS) as stream:
        watcher.start()
        stream.wait_done(4)
        with cpu_hogs(HOGS):
            starve(busy_tree)
            for name in frozen:
                os.killpg(frozen_pids[name], signal.SIGSTOP)
            try:
                for name in frozen:
                    wait_for(lambda n=name: fleet.pid(n) not in (0, frozen_pids[n]), 120, f"{name} restarted")
                wait_for(lambda: all(fleet.instance(n)["state"] == "ok" and fleet.instance(n)["in_upstream"]
                                     for n in frozen), 120, "both back in the upstream")
                # However long it takes the starved instance to answer late.
                wait_for(lambda: "busy" in seen["verdicts"], 60, "a late /health from the starved instance")
            finally:
                for name in frozen:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(frozen_pids[name], signal.SIGCONT)
        served_during = len(stream.results)
    stop.set()
    watcher.join()

    events = _events(fleet, since)
    print("\n" + "\n".join(f"{t} {m}" for t, m in events))
    print(f"busy instance's verdicts: {sorted(seen['verdicts'])}; requests answered: {served_during}")
    # The busy instance: never out, never restarted, never judged stuck or dead.
    assert _tree(fleet, busy) == busy_tree
    assert not [m for _, m in events if m.startswith(f"{busy}:")], events
    assert "busy" in seen["verdicts"] and seen["verdicts"] <= {"ok", "busy"}, seen["verdicts"]
    # Each frozen one: taken out and killed once, and back.
    for name in frozen:
        mine = [m for _, m in events if m.startswith(f"{name}:")]
        assert sum("killing and restarting it" in m for m in mine) == 1, mine
        assert any("ejected -> healthy" in m for m in mine) or fleet.settled(3), mine
    # One at a time: never two out, never two restarting; the second kill
    # comes only once the first instance is back.
    assert seen["out_at_once"] <= 1 and seen["restarting_at_once"] <= 1, seen
    kills = [i for i, (_, m) in enumerate(events) if "killing and restarting it" in m]
    first = events[kills[0]][1].split(":")[0]
    back = next(i for i, (_, m) in enumerate(events) if m.startswith(f"{first}: ejected -> healthy"))
    assert back < kills[1], events
    held = [m for _, m in events if re.search(r"kept in the upstream|restart held back", m)]
    assert held, "the second frozen instance was never held back"
    # Every request ended 200 or with a quick Retry-After; what the frozen
    # ones held was replayed elsewhere once they were killed.
    ledger.check(fleet.run_dir, allowed={200, 503})
