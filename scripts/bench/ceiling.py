"""What the machine itself gives N copies of a model: the bare pipeline in N processes at once.

A fleet of N instances can be no faster than N copies of its model computing
side by side with nothing else running. On a shared or virtual machine that
is often less than N: the copies share caches, memory bandwidth, and a host
that may run other guests on the same physical cores. So the scaling section
measures it, in rounds alternating with the fleet's own: each process is
`app.service.Transcriber` (decode, VAD, batcher, engine) with one engine
thread, as a CPU instance of the fleet has, transcribing the mixed set one
recording at a time. No HTTP, no Nginx, no load generator.

Each copy is a `spawn`ed process (a fresh interpreter, as a Gunicorn worker
loads its model after the fork), loaded once and then told to run a round.
"""

from __future__ import annotations

import multiprocessing
import time

from loadtest.stats import latency_stats

from .env import COPIES, CpuMeter
from .inprocess import Pipeline, compact

LOAD_TIMEOUT_S = 600  # a model that takes longer to load has failed
ROUND_TIMEOUT_S = 1800


def _serve(conn, settings: dict, files: list, repeats: int) -> None:
    """One copy: load, warm, say "ready", then run the files `repeats` times per "go"."""
    try:
        pipeline = Pipeline(**settings)
        for upload in files[:2]:  # the first calls pay lazy imports and allocations
            pipeline.handle(upload.data)
    except Exception as error:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(f"failed to load: {error!r}")
        return
    conn.send("ready")
    while _told(conn) == "go":
        latencies, audio = [], 0.0
        for _ in range(repeats):
            for upload in files:
                start = time.monotonic()
                audio += pipeline.handle(upload.data)
                latencies.append(time.monotonic() - start)
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
        for _ in range(count):
            parent, child = context.Pipe()
            # Not a daemon: a daemonic process may not start children, and pocketsphinx decodes in one.
            # A copy whose parent dies reads the closed pipe as "stop".
            process = context.Process(target=_serve, args=(child, {**settings, "cpu_threads": 1}, files, repeats))
            process.start()
            COPIES.add(process.pid)
            self.conns.append(parent)
            self.processes.append(process)
        try:
            for conn in self.conns:  # loaded one after another would take as long: they load in parallel
                if not conn.poll(LOAD_TIMEOUT_S):
                    raise RuntimeError(f"a copy of the pipeline did not load in {LOAD_TIMEOUT_S} s")
                said = conn.recv()
                if said != "ready":
                    raise RuntimeError(said)
        except BaseException:
            self.close()
            raise

    def run(self, n: int) -> dict:
        """One round: the first `n` copies run the same work at once; a benchmark row."""
        meter, start = CpuMeter(), time.monotonic()
        for conn in self.conns[:n]:
            conn.send("go")
        results = []
        for conn in self.conns[:n]:
            if not conn.poll(ROUND_TIMEOUT_S):
                raise RuntimeError(f"a copy of the pipeline ran past {ROUND_TIMEOUT_S} s")
            results.append(conn.recv())
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
            COPIES.discard(process.pid)
