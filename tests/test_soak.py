"""A soak: mixed traffic against one real Gunicorn worker; resources stay flat.

Good clips in every format, edge files, garbage, malformed requests and
operations GETs, from several concurrent clients. Every request carries its
own X-Request-ID and the ledger must close: each ID answered exactly once,
with the status its kind must get, never a 5xx, and logged exactly once by
the worker. The worker's RSS and open file descriptors (its own and its
children's: the pocketsphinx decoder, multiprocessing's resource tracker)
are sampled after a warm-up and at the end, and the growth is printed.

Bounds, and why:
- open fds may grow by at most 3: every fd a request opens (ffmpeg's pipes,
  the client socket, libsndfile's virtual file) is closed by the time it is
  answered, so steady growth is a leak (one pipe leaked per ffmpeg call shows
  as +148 here); 3 leaves room for a lazily opened file to appear once.
- RSS, measured growing by 3 to 7 MB after warm-up (torch, libsndfile and
  soxr have their buffers by then; what remains is glibc's per-thread arenas
  settling under 16 handler threads), may grow by less than 50 MB in the
  short run: seven times the settling, far below one leaked decode of the
  bomb kind (hundreds of MB). A slow leak (one kept clip, ~100 KB, per
  request) needs the long run: thousands of requests, less than 100 MB in
  all and less than 30 MB over its second half, when nothing should grow.
"""

from __future__ import annotations

import os
import time

import psutil
import pytest
import requests
from soak import Soak, build_mix, settled_usage

pytestmark = pytest.mark.worker

MAX_FD_GROWTH = 3
SHORT_MAX_RSS_GROWTH_MB = 50
LONG_MAX_RSS_GROWTH_MB = 100
# The long run's second half: by then nothing legitimate should still grow.
LONG_MAX_LATE_RSS_GROWTH_MB = 30


@pytest.fixture()
def soak_worker(start_worker, tmp_path, audio_dir):
    worker = start_worker(private_tmp=True, ASR_ENGINE="pocketsphinx", ASR_INSTANCE_NAME="soak",
                          ASR_MAX_AUDIO_SECONDS="600")
    mix = build_mix(audio_dir, tmp_path)
    yield worker, worker.serving_pid(), mix
    assert list(worker.tmpdir.iterdir()) == [], "the soak left files in the worker's temp folder"


def soak(soak_worker, *, total: int, warmup: int, checkpoints: int, clients: int,
         max_rss_mb: float, max_late_rss_mb: float | None = None) -> None:
    worker, pid, mix = soak_worker
    run = Soak(worker, mix, clients=clients)
    started = time.monotonic()
    run.run(warmup)
    samples = [settled_usage(pid)]
    per_checkpoint = (total - warmup) // checkpoints
    for _ in range(checkpoints):
        run.run(per_checkpoint)
        samples.append(settled_usage(pid))
    elapsed = time.monotonic() - started
    statuses = run.check_ledger()

    first, last = samples[0], samples[-1]
    curve = ", ".join(f"{s.rss_mb:.0f} MB/{s.fds} fds" for s in samples)
    print(f"\nsoak: {run._sent} requests, {clients} clients, {elapsed:.1f} s "
          f"({run._sent / elapsed:.1f} req/s); statuses {dict(sorted(statuses.items()))}")
    print(f"soak: after warm-up {first.rss_mb:.0f} MB RSS, {first.fds} fds, {first.processes} processes; "
          f"growth {last.rss_mb - first.rss_mb:+.1f} MB RSS, {last.fds - first.fds:+d} fds; curve: {curve}")

    (child,) = psutil.Process(worker.process.pid).children()
    assert child.pid == pid, "the worker process was replaced: it crashed"
    assert requests.get(worker.url + "/health", timeout=5).status_code == 200
    assert last.processes == first.processes, "a child process was left running or lost"
    assert last.fds - first.fds <= MAX_FD_GROWTH
    assert last.rss_mb - first.rss_mb < max_rss_mb, curve
    if max_late_rss_mb is not None:
        middle = samples[len(samples) // 2]
        assert last.rss_mb - middle.rss_mb < max_late_rss_mb, curve
        assert last.fds - middle.fds <= MAX_FD_GROWTH, curve


def test_short_soak_keeps_memory_and_fds_flat(soak_worker):
    soak(soak_worker, total=300, warmup=60, checkpoints=2, clients=6, max_rss_mb=SHORT_MAX_RSS_GROWTH_MB)


@pytest.mark.soak
def test_long_soak_keeps_memory_and_fds_flat(soak_worker):
    total = int(os.environ.get("ASR_SOAK_REQUESTS", "4000"))
    soak(soak_worker, total=total, warmup=200, checkpoints=8, clients=8,
         max_rss_mb=LONG_MAX_RSS_GROWTH_MB, max_late_rss_mb=LONG_MAX_LATE_RSS_GROWTH_MB)
