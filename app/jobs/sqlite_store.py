"""The embedded store: one SQLite file in WAL mode, shared by every worker
on the host (by default `jobs.db` in the fleet's run folder).

WAL lets readers (progress polls) run beside the one writer; each write is a
short `BEGIN IMMEDIATE` transaction, so claims by several workers serialise
in SQLite and a segment is never handed to two of them. Blobs (uploads,
segment PCM) live in their own table/column so the queue scans never read them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from app.jobs.store import FINISHED, PRIORITY, Claimed, Done, NewSegment, Outcome, Store, Work

SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, name TEXT, last_seen REAL, rtf REAL);
CREATE TABLE IF NOT EXISTS works (
    id TEXT PRIMARY KEY, kind TEXT, owner TEXT, key TEXT UNIQUE, status TEXT, options TEXT,
    filename TEXT, duration REAL, holder TEXT,
    segments_total INTEGER DEFAULT 0, segments_done INTEGER DEFAULT 0,
    segments_failed INTEGER DEFAULT 0, audio_total REAL DEFAULT 0, audio_done REAL DEFAULT 0,
    created REAL, started REAL, finished REAL, error TEXT, result TEXT);
CREATE TABLE IF NOT EXISTS uploads (work_id TEXT PRIMARY KEY, data BLOB);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, work_id TEXT, idx INTEGER, spans TEXT, seconds REAL, priority INTEGER,
    state TEXT, claimed_by TEXT, attempts INTEGER DEFAULT 0, result TEXT, error TEXT, audio BLOB);
CREATE INDEX IF NOT EXISTS segments_queue ON segments (state, priority, id);
CREATE INDEX IF NOT EXISTS segments_work ON segments (work_id, idx);
CREATE INDEX IF NOT EXISTS works_owner ON works (owner, kind, created);
"""
WORK_COLUMNS = ("id, kind, owner, status, options, filename, duration, segments_total, segments_done, "
                "segments_failed, audio_total, audio_done, created, started, finished, error, result")


class SQLiteStore(Store):
    def __init__(self, path: str | Path):
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        # Pages freed by finished work go back to the disk on each sweep
        # (takes effect only when the file is created).
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.executescript(SCHEMA)  # IF NOT EXISTS: every worker may run it

    def _db(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared.
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL: a commit survives a process crash (kill -9);
            # only a power loss may drop the last commits.
            db.execute("PRAGMA synchronous=NORMAL")
            # The WAL holds segment PCM between checkpoints: cut it back after each.
            db.execute("PRAGMA journal_size_limit=67108864")
            self._local.db = db
        return db

    def _tx(self):
        return _Transaction(self._db())

    # --- workers -------------------------------------------------------------
    def heartbeat(self, worker_id, name, rtf):
        with self._tx() as db:
            db.execute("INSERT INTO workers VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                       "last_seen = excluded.last_seen, rtf = excluded.rtf", (worker_id, name, time.time(), rtf))

    def live_workers(self, stale_s):
        rows = self._db().execute("SELECT name, rtf FROM workers WHERE last_seen > ?",
                                  (time.time() - stale_s,)).fetchall()
        return [(name, rtf) for name, rtf in rows]

    def forget_worker(self, worker_id):
        with self._tx() as db:
            db.execute("UPDATE segments SET state = 'queued', claimed_by = NULL "
                       "WHERE state = 'running' AND claimed_by = ?", (worker_id,))
            db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    # --- works ---------------------------------------------------------------
    def create(self, *, kind, owner, key, options, filename, duration, holder, upload):
        with self._tx() as db:
            row = db.execute("SELECT id, status FROM works WHERE key = ?", (key,)).fetchone()
            if row and row[1] not in FINISHED:
                db.execute("UPDATE works SET holder = ? WHERE id = ?", (holder, row[0]))
                return row[0], False
            if row:  # a finished work under the same key: the new one takes it over
                db.execute("UPDATE works SET key = NULL WHERE id = ?", (row[0],))
            work_id = uuid.uuid4().hex
            status = "queued" if upload is not None else "preparing"
            db.execute("INSERT INTO works (id, kind, owner, key, status, options, filename, duration, holder, "
                       "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (work_id, kind, owner, key, status, json.dumps(options), filename, duration, holder,
                        time.time()))
            if upload is not None:
                db.execute("INSERT INTO uploads VALUES (?, ?)", (work_id, upload))
            return work_id, True

    def begin_cut(self, work_id, holder):
        with self._tx() as db:
            taken = db.execute("UPDATE works SET status = 'preparing', holder = ?, segments_total = 0, "
                               "segments_done = 0, segments_failed = 0, audio_total = 0, audio_done = 0 "
                               "WHERE id = ? AND status IN ('queued', 'preparing')", (holder, work_id)).rowcount
            if taken:  # a cutter that died left a part: cut again from the start, nothing twice
                db.execute("DELETE FROM segments WHERE work_id = ?", (work_id,))
            return bool(taken)

    def add_segments(self, work_id, holder, segments: list[NewSegment]):
        with self._tx() as db:
            row = db.execute("SELECT kind, segments_total FROM works WHERE id = ? AND status = 'preparing' "
                             "AND holder = ?", (work_id, holder)).fetchone()
            if row is None:
                return False  # cancelled meanwhile, or another worker took the cut over
            kind, first = row
            db.executemany(
                "INSERT INTO segments (work_id, idx, spans, seconds, priority, state, audio) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                [(work_id, first + i, json.dumps(s.spans), s.seconds, PRIORITY[kind], s.pcm)
                 for i, s in enumerate(segments)])
            db.execute("UPDATE works SET started = coalesce(started, ?), segments_total = segments_total + ?, "
                       "audio_total = audio_total + ? WHERE id = ?",
                       (time.time(), len(segments), sum(s.seconds for s in segments), work_id))
            return True

    def end_cut(self, work_id, holder):
        with self._tx() as db:
            row = db.execute("UPDATE works SET status = 'running', started = coalesce(started, ?) "
                             "WHERE id = ? AND status = 'preparing' AND holder = ? "
                             "RETURNING segments_done + segments_failed >= segments_total",
                             (time.time(), work_id, holder)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM uploads WHERE work_id = ?", (work_id,))
            return bool(row[0])

    def get(self, work_id):
        row = self._db().execute(f"SELECT {WORK_COLUMNS} FROM works WHERE id = ?", (work_id,)).fetchone()
        return _work(row) if row else None

    def list(self, owner, kind, limit):
        rows = self._db().execute(f"SELECT {WORK_COLUMNS} FROM works WHERE owner = ? AND kind = ? "
                                  "ORDER BY created DESC LIMIT ?", (owner, kind, limit)).fetchall()
        return [_work(row) for row in rows]

    def results(self, work_id):
        rows = self._db().execute("SELECT idx, spans, result, error FROM segments WHERE work_id = ? "
                                  "ORDER BY idx", (work_id,)).fetchall()
        return [Done(idx, [tuple(span) for span in json.loads(spans)], result, error)
                for idx, spans, result, error in rows]

    def finish(self, work_id, status, *, result=None, error=None):
        with self._tx() as db:
            changed = db.execute("UPDATE works SET status = ?, result = ?, error = ?, finished = ?, key = NULL "
                                 "WHERE id = ? AND status NOT IN ('succeeded', 'failed', 'cancelled')",
                                 (status, result, error, time.time(), work_id)).rowcount
            _drop_data(db, work_id)
            return bool(changed)

    def cancel(self, work_id):
        return self.finish(work_id, "cancelled", error="cancelled by the client")

    def delete(self, work_id):
        with self._tx() as db:
            _drop_data(db, work_id)
            db.execute("DELETE FROM works WHERE id = ?", (work_id,))

    # --- the queue -----------------------------------------------------------
    def claim(self, worker_id, limit, stale_s, max_attempts):
        with self._tx() as db:
            db.execute("UPDATE segments SET state = 'queued', claimed_by = NULL WHERE state = 'running' AND "
                       "claimed_by NOT IN (SELECT id FROM workers WHERE last_seen > ?)", (time.time() - stale_s,))
            poisoned = db.execute("SELECT id FROM segments WHERE state = 'queued' AND attempts >= ?",
                                  (max_attempts,)).fetchall()
            if poisoned:
                _settle(db, [Outcome(sid, None, f"the worker died {max_attempts} times on this segment")
                             for (sid,) in poisoned], None)
            rows = db.execute("SELECT s.id, s.work_id, w.options, s.audio FROM segments s JOIN works w "
                              "ON w.id = s.work_id WHERE s.state = 'queued' ORDER BY s.priority, s.id LIMIT ?",
                              (limit,)).fetchall()
            db.executemany("UPDATE segments SET state = 'running', claimed_by = ?, attempts = attempts + 1 "
                           "WHERE id = ?", [(worker_id, row[0]) for row in rows])
            return [Claimed(sid, work_id, json.loads(options), audio) for sid, work_id, options, audio in rows]

    def release(self, worker_id, segment_ids):
        with self._tx() as db:
            db.executemany("UPDATE segments SET state = 'queued', claimed_by = NULL, attempts = attempts - 1 "
                           "WHERE id = ? AND claimed_by = ? AND state = 'running'",
                           [(sid, worker_id) for sid in segment_ids])

    def complete(self, worker_id, outcomes):
        with self._tx() as db:
            return _settle(db, outcomes, worker_id)

    def claim_preparation(self, worker_id, stale_s):
        with self._tx() as db:
            row = db.execute(
                f"SELECT {WORK_COLUMNS} FROM works WHERE kind = 'job' AND (status = 'queued' OR "
                "(status = 'preparing' AND (holder IS NULL OR holder NOT IN "
                "(SELECT id FROM workers WHERE last_seen > ?)))) ORDER BY created LIMIT 1",
                (time.time() - stale_s,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE works SET status = 'preparing', holder = ? WHERE id = ?", (worker_id, row[0]))
            upload = db.execute("SELECT data FROM uploads WHERE work_id = ?", (row[0],)).fetchone()
            return _work(row), (upload[0] if upload else b"")

    # --- upkeep --------------------------------------------------------------
    def sweep(self, *, stale_s, orphan_s, retention_s):
        now = time.time()
        with self._tx() as db:
            expired = db.execute("SELECT id FROM works WHERE finished IS NOT NULL AND finished < ?",
                                 (now - retention_s,)).fetchall()
            orphans = db.execute("SELECT id FROM works WHERE kind = 'sync' AND created < ? AND (holder IS NULL "
                                 "OR holder NOT IN (SELECT id FROM workers WHERE last_seen > ?))",
                                 (now - orphan_s, now - stale_s)).fetchall()
            for (work_id,) in expired + orphans:
                _drop_data(db, work_id)
                db.execute("DELETE FROM works WHERE id = ?", (work_id,))
            db.execute("DELETE FROM workers WHERE last_seen < ?", (now - max(orphan_s, stale_s) * 10,))
            rows = db.execute("SELECT id FROM works WHERE kind = 'job' AND status = 'running' AND "
                              "segments_done + segments_failed >= segments_total").fetchall()
        self._db().execute("PRAGMA incremental_vacuum")
        return [work_id for (work_id,) in rows]


def _settle(db: sqlite3.Connection, outcomes: list[Outcome], worker_id: str | None) -> list[str]:
    """Writes each outcome once; counts it on its work. None: any holder."""
    complete = []
    for outcome in outcomes:
        state = "failed" if outcome.result is None else "done"
        row = db.execute("UPDATE segments SET state = ?, result = ?, error = ?, audio = NULL, claimed_by = NULL "
                         "WHERE id = ? AND state IN ('running', 'queued') AND (? IS NULL OR claimed_by = ?) "
                         "RETURNING work_id, seconds",
                         (state, outcome.result, outcome.error, outcome.segment_id, worker_id, worker_id)).fetchone()
        if row is None:
            continue  # another worker's result came first, or the work is gone
        counter = "segments_done" if state == "done" else "segments_failed"
        done = db.execute(f"UPDATE works SET {counter} = {counter} + 1, audio_done = audio_done + ? WHERE id = ? "
                          "RETURNING status = 'running' AND segments_done + segments_failed >= segments_total",
                          (row[1], row[0])).fetchone()
        if done and done[0]:
            complete.append(row[0])
    return complete


def _drop_data(db: sqlite3.Connection, work_id: str) -> None:
    db.execute("DELETE FROM segments WHERE work_id = ?", (work_id,))
    db.execute("DELETE FROM uploads WHERE work_id = ?", (work_id,))


def _work(row) -> Work:
    values = list(row)
    values[4] = json.loads(values[4])
    return Work(*values)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the write lock is
    taken up front, so two claimers never both read the same queued rows."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, *_):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
