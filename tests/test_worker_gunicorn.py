"""A real Gunicorn worker: batching, back-pressure, health during inference."""

import concurrent.futures
import re
import signal
import threading
import time
import tomllib

import pytest
import requests
from machine import REPO, wait_for
from speech import CARDS

pytestmark = pytest.mark.worker

# What the fleet's health poller allows a /health answer by default
# (fleet.toml): answering within it is what keeps a busy worker in service.
HEALTH_TIMEOUT_S = tomllib.loads((REPO / "fleet.toml").read_text())["health"]["timeout_s"]


def post(url, path, endpoint="/asr", **form):
    with open(path, "rb") as handle:
        return requests.post(url + endpoint, files={"file": handle}, data=form, timeout=120)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_concurrent_requests_are_batched(start_worker, audio_dir):
    worker = start_worker(ASR_ENGINE="pocketsphinx", ASR_BATCH_WAIT_MS="50")
    paths = [audio_dir / name for name in CARDS * 3]
    with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
        responses = list(pool.map(lambda p: post(worker.url, p), paths))
    assert [r.status_code for r in responses] == [200] * len(paths)
    metrics = requests.get(worker.url + "/metrics", timeout=5).text
    batches = metric(metrics, "asr_batch_size_count")
    segments = metric(metrics, "asr_batch_size_sum")
    # Warm-up is one batch of one; the rest should share model calls.
    assert segments > batches, f"{segments} segments in {batches} batches: no batching"
    assert metric(metrics, 'asr_batch_size_bucket{le="1.0"}') < batches


def test_full_queue_answers_503_with_retry_after_at_once(start_worker, audio_dir):
    worker = start_worker(ASR_ENGINE="pocketsphinx", ASR_QUEUE_MAX_ITEMS="2",
                          ASR_BATCH_MAX_ITEMS="1")
    path = audio_dir / "jfk.flac"  # four segments: fills the queue alone
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(worker.url, path), range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            assert "queue full" in response.json()["msg"]
            assert response.elapsed.total_seconds() < 5
    assert requests.get(worker.url + "/health", timeout=5).status_code == 200


def in_flight(worker) -> int:
    return (worker.health() or {}).get("in_flight", 0)


def test_health_answers_while_a_long_inference_runs(start_worker, audio_dir):
    worker = start_worker(ASR_ENGINE="pocketsphinx")
    long_request = threading.Thread(
        target=post, args=(worker.url, audio_dir / "jfk.flac", "/asr_simple"))
    long_request.start()
    # From the moment the worker holds the request, not after a guessed delay
    # that a slow or a fast machine would get wrong.
    wait_for(lambda: in_flight(worker) or not long_request.is_alive(), 60, "the request to reach the worker",
             interval=0.02)
    timings = []
    while long_request.is_alive() and len(timings) < 20:
        response = requests.get(worker.url + "/health", timeout=5)
        timings.append(response.elapsed.total_seconds())
        assert response.status_code == 200
        body = response.json()
        assert body["in_flight"] == 1 or not long_request.is_alive()
        time.sleep(0.1)  # pacing the checks, not waiting for anything
    long_request.join()
    assert len(timings) >= 3, "the inference ended before /health was checked"
    print(f"/health during inference: max {max(timings) * 1000:.0f} ms over {len(timings)} calls",
          [round(t * 1000) for t in timings])
    assert max(timings) < HEALTH_TIMEOUT_S


def test_sigterm_finishes_work_in_progress(start_worker, audio_dir):
    worker = start_worker(ASR_ENGINE="pocketsphinx")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, worker.url, audio_dir / "jfk.flac")
        # SIGTERM once the worker holds the request: in progress, not still in flight to it.
        wait_for(lambda: in_flight(worker), 60, "the request to reach the worker", interval=0.02)
        worker.process.send_signal(signal.SIGTERM)
        response = pending.result()
    assert response.status_code == 200 and response.json()["text"]
    assert worker.process.wait(timeout=40) == 0


def test_model_that_cannot_load_stops_the_worker_with_one_line(start_worker, tmp_path):
    worker = start_worker(wait=False, ASR_ENGINE="funasr", ASR_MODEL=str(tmp_path / "nope"))
    assert worker.process.wait(timeout=120) != 0
    log = worker.log()
    assert re.search(r"model load failed: cannot load FunASR model '.*nope'", log), log


def test_funasr_model_serves_through_gunicorn(start_worker, tiny_model_dir, audio_dir):
    worker = start_worker(ASR_ENGINE="funasr", ASR_MODEL=str(tiny_model_dir))
    health = requests.get(worker.url + "/health", timeout=5).json()
    assert (health["engine"], health["model"], health["device"]) == ("funasr", str(tiny_model_dir), "cpu")
    response = post(worker.url, audio_dir / "jfk.flac", lang="zh")  # SenseVoice takes zh
    body = response.json()
    assert response.status_code == 200, body
    assert body["model"] == str(tiny_model_dir) and body["engine"] == "funasr"
    assert body["stats"]["total_segments"] >= 2
    assert "<|" not in body["data"] and "<|" not in body["text"]
    response = post(worker.url, audio_dir / "jfk.flac", lang="fr")
    assert response.status_code == 422 and "auto, en, ja, ko, yue, zh" in response.json()["msg"]
