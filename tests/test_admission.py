"""Issue 13, one worker: /health never waits behind transcriptions.

A real Gunicorn worker admits ASR_MAX_CONCURRENT transcriptions and runs
that many handler threads plus a reserve (deploy/gunicorn.conf.py). Flooded
directly (no Nginx in front to hold it to max_conns) with twelve times its
limit: the requests past the limit are refused at once with 503 and
Retry-After, /health answers in milliseconds all along and says the worker is
busy and making progress, and the admitted requests are all answered.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import requests

pytestmark = pytest.mark.worker

LIMIT = 2


def test_health_answers_at_once_while_the_worker_is_flooded(start_worker, audio_dir):
    worker = start_worker(ASR_ENGINE="pocketsphinx", ASR_MAX_CONCURRENT=str(LIMIT))
    data = (audio_dir / "jfk.flac").read_bytes()
    samples: list[tuple[float, dict]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            started = time.monotonic()
            body = requests.get(worker.url + "/health", timeout=30).json()
            samples.append((time.monotonic() - started, body))
            stop.wait(0.1)

    def post(_: int) -> requests.Response:
        return requests.post(worker.url + "/asr", files={"file": ("jfk.flac", data)}, timeout=300)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with concurrent.futures.ThreadPoolExecutor(12 * LIMIT) as pool:
        responses = list(pool.map(post, range(12 * LIMIT)))
    stop.set()
    watcher.join()

    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 503]
    slowest = max(seconds for seconds, _ in samples)
    print(f"\n{len(served)} served, {len(refused)} refused (slowest refusal "
          f"{max(r.elapsed.total_seconds() for r in refused):.3f} s); /health: {len(samples)} calls, "
          f"slowest {slowest * 1000:.0f} ms")
    assert len(served) + len(refused) == len(responses) and len(served) >= LIMIT
    assert all(r.json()["text"] for r in served)
    for response in refused:
        assert response.headers["Retry-After"] == "1" and "at capacity" in response.json()["msg"]
        assert response.elapsed.total_seconds() < 1.0
    assert slowest < 0.5, sorted(seconds for seconds, _ in samples)[-5:]
    busy = [body for _, body in samples if body["busy"]]
    assert busy and all(body["status"] == "ok" and body["admitted"] <= LIMIT for body in busy)
    assert max(body["batches_done"] for body in busy) > min(body["batches_done"] for body in busy)
    after = requests.get(worker.url + "/health", timeout=5).json()
    assert (after["admitted"], after["in_flight"], after["busy"]) == (0, 0, False)
    assert after["max_concurrent"] == LIMIT
