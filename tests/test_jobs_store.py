"""The shared segment queue (app/jobs/sqlite_store.py) on a real SQLite file,
and the pace that sets deadlines: claims never hand one segment to two
workers, a dead worker's segments come back, a result is written once."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from app.errors import TooLarge
from app.jobs.pace import Pace
from app.jobs.sqlite_store import SQLiteStore
from app.jobs.store import JOB, SYNC, NewSegment, Outcome
from app.metrics import Metrics
from app.settings import Settings

pytestmark = pytest.mark.unit

STALE = 0.5


def _segments(count: int, seconds: float = 30.0) -> list[NewSegment]:
    return [NewSegment([(i * seconds, (i + 1) * seconds)], b"\0\0" * 16, seconds) for i in range(count)]


def _work(store: SQLiteStore, count: int, kind: str = SYNC, key: str = "k") -> str:
    work_id, created = store.create(kind=kind, owner="", key=key, options={"language": "en"}, filename="",
                                    duration=count * 30.0, holder="w0", upload=None)
    assert created and store.begin_cut(work_id, "w0")
    assert store.add_segments(work_id, "w0", _segments(count))
    assert store.end_cut(work_id, "w0") is (count == 0)
    return work_id


def test_segments_are_claimable_while_the_cut_goes_on_and_complete_only_after_it(tmp_path):
    store = SQLiteStore(tmp_path / "jobs.db")
    work_id, _ = store.create(kind=JOB, owner="", key="k", options={}, filename="", duration=90.0,
                              holder="w0", upload=b"audio")
    assert store.begin_cut(work_id, "cutter")
    assert store.add_segments(work_id, "cutter", _segments(2))
    store.heartbeat("w1", "w1", 0.1)
    first = store.claim("w1", 5, 30, 3)
    assert [c.work_id for c in first] == [work_id] * 2
    # Both done, but the cut is not over: the work is not complete yet.
    assert store.complete("w1", [Outcome(c.id, '{"text": "x"}') for c in first]) == []
    assert store.get(work_id).status == "preparing"
    assert store.add_segments(work_id, "cutter", _segments(1))
    assert store.end_cut(work_id, "cutter") is False  # one still queued
    [last] = store.claim("w1", 5, 30, 3)
    assert store.complete("w1", [Outcome(last.id, '{"text": "y"}')]) == [work_id]
    assert [d.index for d in store.results(work_id)] == [0, 1, 2]
    work = store.get(work_id)
    assert (work.status, work.segments_total, work.segments_done) == ("running", 3, 3)


def test_a_cut_taken_over_drops_the_dead_cutters_part_and_refuses_its_late_segments(tmp_path):
    store = SQLiteStore(tmp_path / "jobs.db")
    work_id, _ = store.create(kind=SYNC, owner="", key="k", options={}, filename="", duration=90.0,
                              holder="first", upload=None)
    assert store.begin_cut(work_id, "first") and store.add_segments(work_id, "first", _segments(2))
    # The first cutter died; Nginx's replay reaches a sibling, which cuts again from the start.
    assert store.begin_cut(work_id, "second")
    assert store.get(work_id).segments_total == 0
    assert not store.add_segments(work_id, "first", _segments(1))
    assert store.add_segments(work_id, "second", _segments(3))
    assert store.end_cut(work_id, "first") is None
    assert store.end_cut(work_id, "second") is False
    assert [d.index for d in store.results(work_id)] == [0, 1, 2]
    assert not store.begin_cut(work_id, "third")  # running: nothing to cut any more


def test_concurrent_claims_hand_every_segment_to_exactly_one_worker(tmp_path):
    store = SQLiteStore(tmp_path / "jobs.db")
    work_id = _work(store, 200)

    start = threading.Barrier(4)

    def drain(worker: str) -> list[int]:
        mine = []
        local = SQLiteStore(tmp_path / "jobs.db")  # its own connection, as another process would
        local.heartbeat(worker, worker, 0.1)
        start.wait()  # all four claim at once, not one after another
        while claimed := local.claim(worker, 3, 30, 3):
            mine += [c.id for c in claimed]
            local.complete(worker, [Outcome(c.id, '{"text": "x"}') for c in claimed])
            time.sleep(0.002)  # as the model would take: the others get their turn
        return mine

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        shares = list(pool.map(drain, ["a", "b", "c", "d"]))
    everything = [sid for share in shares for sid in share]
    assert len(everything) == len(set(everything)) == 200
    assert sum(1 for share in shares if share) >= 2
    work = store.get(work_id)
    assert (work.segments_done, work.segments_failed, work.audio_done) == (200, 0, 6000.0)


def test_a_dead_workers_segments_are_requeued_and_its_late_result_dropped(tmp_path):
    store = SQLiteStore(tmp_path / "jobs.db")
    work_id = _work(store, 2)
    store.heartbeat("dead", "dead", 0.1)
    taken = store.claim("dead", 2, STALE, 3)
    assert len(taken) == 2
    store.heartbeat("alive", "alive", 0.1)
    assert store.claim("alive", 2, STALE, 3) == []  # the lease still holds
    time.sleep(STALE + 0.1)
    store.heartbeat("alive", "alive", 0.1)
    retaken = store.claim("alive", 2, STALE, 3)
    assert sorted(c.id for c in retaken) == sorted(c.id for c in taken)
    assert store.complete("alive", [Outcome(c.id, '{"text": "new"}') for c in retaken]) == [work_id]
    # The dead worker wakes up (SIGSTOP, say) and reports: written once, the first result stays.
    assert store.complete("dead", [Outcome(c.id, '{"text": "old"}') for c in taken]) == []
    assert [d.result for d in store.results(work_id)] == ['{"text": "new"}'] * 2
    assert store.get(work_id).segments_done == 2


def test_a_segment_that_kills_every_worker_fails_after_three_tries(tmp_path):
    store = SQLiteStore(tmp_path / "jobs.db")
    work_id = _work(store, 1)
    for attempt in range(3):
        store.heartbeat(f"w{attempt}", "w", 0.1)
        assert len(store.claim(f"w{attempt}", 1, STALE, 3)) == 1
        time.sleep(STALE + 0.1)
    store.heartbeat("last", "w", 0.1)
    assert store.claim("last", 1, STALE, 3) == []
    [done] = store.results(work_id)
    assert done.result is None and "died 3 times" in done.error


def test_sync_segments_go_before_jobs_and_a_replayed_key_finds_its_work(tmp_path):
    store = SQLiteStore(tmp_path / "jobs.db")
    job = _work(store, 2, kind=JOB, key="job")
    sync = _work(store, 2, kind=SYNC, key="sync")
    store.heartbeat("w", "w", 0.1)
    assert {c.work_id for c in store.claim("w", 2, 30, 3)} == {sync}
    again, created = store.create(kind=SYNC, owner="", key="sync", options={}, filename="", duration=60,
                                  holder="w2", upload=None)
    assert (again, created) == (sync, False)
    assert store.finish(job, "succeeded", result="{}") and not store.finish(job, "failed")
    # A finished work's key is free again: the same request sent later is new work.
    assert store.create(kind=JOB, owner="", key="job", options={}, filename="", duration=1, holder=None,
                        upload=b"x")[1]


def test_sweep_deletes_expired_jobs_and_orphaned_sync_work(tmp_path):
    store = SQLiteStore(tmp_path / "jobs.db")
    job = _work(store, 1, kind=JOB, key="job")
    store.finish(job, "succeeded", result="{}")
    orphan = _work(store, 1, kind=SYNC, key="sync")  # its holder "w0" never beat
    time.sleep(0.2)
    store.sweep(stale_s=STALE, orphan_s=0.1, retention_s=0.1)
    assert store.get(job) is None and store.get(orphan) is None
    assert store.claim("w", 5, 30, 3) == []


@pytest.mark.parametrize("workers, rtf", [(1, 0.1), (3, 0.1)])
def test_the_deadline_follows_the_length_and_the_fleets_speed(tmp_path, workers, rtf):
    store = SQLiteStore(tmp_path / "jobs.db")
    for n in range(workers):
        store.heartbeat(f"w{n}", f"w{n}", rtf)
    settings = Settings(engine="pocketsphinx", request_timeout_seconds=60, max_sync_seconds=1800)
    pace = Pace(settings, Metrics(), store)
    short, hour = pace.plan(30, fanned=True), pace.plan(3600, fanned=True)
    assert short.deadline_s == 60  # the floor: ASR_REQUEST_TIMEOUT
    assert hour.workers == workers and hour.deadline_s > 3600 * rtf / workers
    assert hour.deadline_s < pace.plan(7200, fanned=True).deadline_s
    started = time.monotonic()
    with pytest.raises(TooLarge, match=r"over the 1800 s limit .*POST /v1/jobs"):
        pace.plan(12 * 3600 * workers, fanned=True)
    assert time.monotonic() - started < 0.5
