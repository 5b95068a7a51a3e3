"""What the machine itself gives N copies of a model: the bare pipeline in N processes at once.

N instances of the fleet compute the same model on the same cores as N
copies of it alone; what the copies reach side by side is the machine's part
of the speed-up, whatever the fleet does. On a shared or virtual machine
that is often less than N: the copies share caches, memory bandwidth, and a
host that may run other guests on the same physical cores. So the scaling
section measures it, in rounds alternating with the fleet's own (the fleet
stays up, idle, meanwhile): each process is `app.service.Transcriber`
(decode, VAD, batcher, engine) with one engine thread, as a CPU instance of
the fleet has, transcribing the mixed set one recording at a time. No HTTP,
no Nginx, no load generator.

Each copy is a `spawn`ed process (a fresh interpreter, as a Gunicorn worker
loads its model after the fork), loaded once and then told to run a round.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import time

from loadtest.stats import latency_stats

from .env import COPIES, CpuMeter
from .inprocess import Pipeline, compact

LOAD_TIMEOUT_S = 600  # a model that takes longer to load has failed
ROUND_TIMEOUT_S = 1800


def _serve(conn, settings: dict, files: list, repeats: int) -> None:
    """One copy: load, warm, say "ready", then run the files `repeats` times per "go". A failure
    is sent to the parent as a line of text, which it raises."""
    try:
        pipeline = Pipeline(**settings)
        for upload in files[:2]:  # the first calls pay lazy imports and allocations
            pipeline.handle(upload.data)
    except Exception as error:  # noqa: BLE001 - reported to the parent
        conn.send(f"a copy of the pipeline failed to load: {error!r}")
        return
    conn.send("ready")
    while _told(conn) == "go":
        latencies, audio = [], 0.0
        try:
            for _ in range(repeats):
                for upload in files:
                    start = time.monotonic()
                    audio += pipeline.handle(upload.data)
                    latencies.append(time.monotonic() - start)
        except Exception as error:  # noqa: BLE001 - reported to the parent
            conn.send(f"a copy of the pipeline failed: {error!r}")
            return
        conn.send({"audio": audio, "latencies": latencies})


def _told(conn) -> str:
    """The parent's next word; "stop" when the parent is gone (the pipe closed)."""
    try:
        return conn.recv()
    except EOFError:
        return "stop"


class Copies:
    """`count` loaded copies of the pipeline, each in its own process, idle between rounds."""

    def __init__(self, count: int, settings: dict, files: list, repeats: int):
        context = multiprocessing.get_context("spawn")
        self.repeats = repeats
        self.conns, self.processes = [], []
        try:
            for _ in range(count):
                parent, child = context.Pipe()
                # Not a daemon: a daemonic process may not start children, and pocketsphinx decodes in
                # one. A copy whose parent dies reads the closed pipe as "stop".
                process = context.Process(target=_serve,
                                          args=(child, {**settings, "cpu_threads": 1}, files, repeats))
                process.start()
                child.close()  # the copy's end lives in the copy alone, so its exit closes the pipe
                COPIES.add(process.pid)
                self.conns.append(parent)
                self.processes.append(process)
            for i in range(count):  # waiting on each in turn costs nothing: they load in parallel
                if self._answer(i, LOAD_TIMEOUT_S) != "ready":
                    raise RuntimeError("a copy of the pipeline answered something else than ready")
        except BaseException:
            self.close()
            raise

    def _answer(self, i: int, timeout: float):
        """Copy i's next message; a copy that failed, exited or ran past `timeout` raises."""
        conn, process = self.conns[i], self.processes[i]
        if not multiprocessing.connection.wait([conn, process.sentinel], timeout):
            raise RuntimeError(f"a copy of the pipeline said nothing in {timeout:.0f} s")
        try:
            if not conn.poll():  # only the sentinel is ready: the copy exited without a word
                raise EOFError
            said = conn.recv()
        except EOFError:
            process.join(5)
            raise RuntimeError(f"a copy of the pipeline exited (exit code {process.exitcode})") from None
        if isinstance(said, str) and said.startswith("a copy"):
            raise RuntimeError(said)
        return said

    def run(self, n: int) -> dict:
        """One round: the first `n` copies run the same work at once; a benchmark row."""
        meter, start = CpuMeter(), time.monotonic()
        for conn in self.conns[:n]:
            conn.send("go")
        results = [self._answer(i, ROUND_TIMEOUT_S) for i in range(n)]
        elapsed = time.monotonic() - start
        latencies = [lat for r in results for lat in r["latencies"]]
        return compact(sent=len(latencies), ok=len(latencies), elapsed=elapsed,
                       audio=sum(r["audio"] for r in results), latency_ms=latency_stats(latencies),
                       cpu=meter.read(), errors=[], cpu_by_kind=meter.by_kind())

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send("stop")
            except OSError:  # that copy is gone already
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
            COPIES.discard(process.pid)
