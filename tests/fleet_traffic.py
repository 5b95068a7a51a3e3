"""Traffic for fleet tests: one-off requests, streams of them, and the
request-ID ledger that proves nothing was lost or done twice. The fleet
they go to is tests/fleet_harness.py's."""

from __future__ import annotations

import collections
import itertools
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Self

import requests
from fleet_harness import CLIP
from machine import wait_for


def post_clip(url: str, timeout: float = 120, **headers) -> tuple[object, str | None]:
    """One transcription on a fresh connection: (status or exception text, worker)."""
    try:
        with CLIP.open("rb") as handle:
            response = requests.post(url + "/asr", files={"file": handle}, timeout=timeout, headers=headers)
        body_ok = response.status_code != 200 or response.json().get("code") == 0
        return (response.status_code if body_ok else "bad body"), response.headers.get("X-ASR-Worker")
    except (requests.RequestException, ValueError) as error:
        return f"{type(error).__name__}: {error}"[:200], None


class Ledger:
    """Nothing lost, nothing done twice: every request carries a unique
    X-Request-ID and gets exactly one outcome; `check` proves each is a 200
    with a transcript or an explicit refusal (413/422/429/503 with
    Retry-After), none is missing, and no worker logged a 200 for an ID
    another worker also logged (`POST /asr 200 ... id=<ID>`: duplicated work)."""

    ALLOWED = frozenset({200, 413, 422, 429, 503})
    WORKER_LINE = re.compile(r"POST /asr (\d{3}) [\d.]+s id=(\S+)")

    def __init__(self, prefix: str = "req"):
        self.prefix = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.issued: list[str] = []
        self.outcomes: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)

    def post(self, url: str, clip: Path = CLIP, timeout: float = 120) -> dict:
        with self._lock:
            rid = f"{self.prefix}-{next(self._numbers)}"
            self.issued.append(rid)
        outcome: dict = {"id": rid, "status": None, "started": time.monotonic()}
        try:
            with clip.open("rb") as handle:
                response = requests.post(url + "/asr", files={"file": (clip.name, handle)}, timeout=timeout,
                                         headers={"X-Request-ID": rid})
            outcome.update(status=response.status_code, worker=response.headers.get("X-ASR-Worker"),
                           retry_after=response.headers.get("Retry-After"),
                           echoed=response.headers.get("X-Request-ID"))
            try:
                body = response.json()
            except ValueError:
                body = {}
            outcome.update(code=body.get("code"), text=body.get("text"), msg=body.get("msg"))
        except requests.RequestException as error:
            outcome["error"] = f"{type(error).__name__}: {error}"[:300]
        outcome["seconds"] = time.monotonic() - outcome["started"]
        with self._lock:
            assert rid not in self.outcomes, f"{rid} recorded twice"
            self.outcomes[rid] = outcome
        return outcome

    def statuses(self) -> collections.Counter:
        return collections.Counter(o["status"] for o in self.outcomes.values())

    def worker_logs(self, run_dir: Path) -> dict[str, list[tuple[str, int]]]:
        """ID -> [(instance, status)] from every instance's log (rotated ones too)."""
        seen: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
        for path in (run_dir / "logs").glob("asr-*.log*"):
            for match in self.WORKER_LINE.finditer(path.read_text(errors="replace")):
                if match.group(2).startswith(self.prefix):
                    seen[match.group(2)].append((path.name.split(".log")[0], int(match.group(1))))
        return seen

    def problems(self, run_dir: Path, allowed=ALLOWED) -> list[str]:
        out = [f"{rid}: no outcome" for rid in self.issued if rid not in self.outcomes]
        answered = {rid: o for rid, o in self.outcomes.items() if o["status"] == 200}
        # Supervisor copies worker output to the log files asynchronously.
        deadline = time.monotonic() + 20
        logs = self.worker_logs(run_dir)
        while time.monotonic() < deadline and any(
                not any(s == 200 for _, s in logs.get(rid, [])) for rid in answered):
            time.sleep(0.5)
            logs = self.worker_logs(run_dir)
        for rid, o in self.outcomes.items():
            status, what = o["status"], f"{rid} ({o.get('worker')}, {o['seconds']:.1f} s)"
            if status is None:
                out.append(f"{what}: no answer: {o['error']}")
            elif status not in allowed:
                out.append(f"{what}: unexplained {status}: {o.get('msg')}")
            elif o["echoed"] != rid:
                out.append(f"{what}: X-Request-ID came back as {o['echoed']!r}")
            elif status == 200 and (o["code"] != 0 or o["text"] is None):
                out.append(f"{what}: 200 without a transcript: {o.get('msg')}")
            elif status in (429, 503) and not o["retry_after"]:
                out.append(f"{what}: {status} without Retry-After: {o.get('msg')}")
            done = [instance for instance, logged in logs.get(rid, []) if logged == 200]
            if len(done) > 1:
                out.append(f"{what}: transcribed twice, by {done}")
            elif status == 200 and done != [o["worker"]]:
                out.append(f"{what}: answered by {o['worker']} but worker logs show 200 from {done}")
        return out

    def check(self, run_dir: Path, allowed=ALLOWED) -> collections.Counter:
        problems = self.problems(run_dir, allowed)
        assert not problems, (f"{len(problems)} problem(s) in {len(self.issued)} requests "
                              f"{dict(self.statuses())}:\n" + "\n".join(problems[:20]))
        return self.statuses()


class Stream:
    """Transcription requests from `concurrency` threads until stopped (and at
    least `minimum` sent, at most `maximum`); through `ledger` when given,
    cycling over `clips`."""

    def __init__(self, url: str, concurrency: int = 3, minimum: int = 0, maximum: int = 10_000,
                 ledger: Ledger | None = None, clips: list[Path] | None = None):
        self.url, self.minimum, self.maximum = url, minimum, maximum
        self.ledger, self.clips = ledger, itertools.cycle(clips or [CLIP])
        self.results: list[tuple[object, str | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def _take(self) -> Path | None:
        with self._lock:
            if self._sent >= self.maximum or (self._stop.is_set() and self._sent >= self.minimum):
                return None
            self._sent += 1
            return next(self.clips)

    def _run(self) -> None:
        while clip := self._take():
            if self.ledger is None:
                result = post_clip(self.url)
            else:
                outcome = self.ledger.post(self.url, clip)
                result = (outcome["status"] or outcome["error"], outcome.get("worker"))
            with self._lock:
                self.results.append(result)

    def __enter__(self) -> Self:
        self._sent = 0
        for thread in self._threads:
            thread.start()
        return self

    def wait_done(self, count: int, timeout: float = 120) -> None:
        wait_for(lambda: len(self.results) >= count, timeout, f"{count} responses")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=300)

    def failures(self) -> list:
        return [r for r in self.results if r[0] != 200]

    def by_worker(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, worker in self.results:
            counts[worker] = counts.get(worker, 0) + 1
        return counts
