"""Long recordings on a real fleet (supervisord, Nginx, two Gunicorn workers
on Whisper tiny.en, one core each, sharing the job store in the run folder):
spread over both workers, surviving kill -9 mid-request and mid-job, jobs
surviving a rolling restart and a stop + serve, a 3-hour file refused
synchronously at once and done as a job.

The 1-hour version of the first test is `-m long_recording` (about 3 min);
the default run uses 10 minutes of the same audio. About 5 min in all."""

from __future__ import annotations

import collections
import concurrent.futures
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from fleet_harness import Fleet
from machine import REPO, wait_for

from tests.long_audio import build, check_cues, flac, query, submit, wait_job
from tests.speech import word_error_rate

pytestmark = pytest.mark.fleet

# Whisper tiny.en on the repeated LibriVox + JFK clips (measured ~0.05 through
# /asr); base is held to 0.10 (tests/test_whisper_worker.py).
WER_BOUND = 0.12


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, audio_dir):
    fleet = Fleet(tmp_path_factory.mktemp("fanout"), weights=[1, 1], active=2, max_upload_mb=100,
                  tables={"worker": {"request_timeout_s": 120, "startsecs": 2, "graceful_timeout_s": 5,
                                     "stopwaitsecs": 15}})
    fleet.top.update(engine="whisper", model="tiny.en")
    fleet.write_config()
    with fleet.running(2):
        fleet.db = fleet.run_dir / "jobs.db"
        yield fleet


@pytest.fixture(autouse=True)
def settled(fleet):
    fleet.wait_settled(2, timeout=120)


def audio_per_worker(fleet) -> dict[str, float]:
    return {name: requests.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()["audio_seconds"]
            for name, port in zip(fleet.names, fleet.ports)}


def post_sync(fleet, data: bytes, request_id: str, timeout: float = 900) -> requests.Response:
    return requests.post(fleet.url + "/asr", files={"file": ("long.flac", data)}, data={"lang": "en"},
                         headers={"X-Request-ID": request_id}, timeout=timeout)


def check_answer(body: dict, text: str, duration: float) -> None:
    assert body["stats"]["failed_segments"] == 0, body["stats"]
    check_cues(body["data"], duration)
    error = word_error_rate([text], [body["text"]])
    print(f"{duration / 60:.0f} min: WER {error:.3f}, {body['stats']['total_segments']} segments")
    assert error <= WER_BOUND


@pytest.mark.parametrize("minutes", [10, pytest.param(60, marks=pytest.mark.long_recording)])
def test_a_long_recording_is_spread_over_every_worker(fleet, minutes):
    samples, text = build(minutes * 60)
    before = audio_per_worker(fleet)
    started = time.monotonic()
    response = post_sync(fleet, flac(samples), f"long-{minutes}")
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    check_answer(response.json(), text, len(samples) / 16_000)
    share = {name: seconds - before[name] for name, seconds in audio_per_worker(fleet).items()}
    print(f"{minutes} min in {took:.0f} s; audio seconds per worker: {share}")
    assert all(seconds >= 0.25 * sum(share.values()) for seconds in share.values()), share


def _holders(fleet) -> dict[str, set[str]]:
    """Instance names holding running segments, per work kind."""
    rows = query(fleet.db, "SELECT w.kind, s.claimed_by FROM segments s JOIN works w ON w.id = s.work_id "
                           "WHERE s.state = 'running'")
    out = collections.defaultdict(set)
    for kind, claimer in rows:
        out[kind].add(claimer.rsplit("-", 2)[0])
    return out


def test_kill_9_mid_fanned_out_request_and_mid_job_loses_and_doubles_nothing(fleet):
    sync_samples, sync_text = build(300)
    job_samples, job_text = build(240)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post_sync, fleet, flac(sync_samples), "kill-sync")
        job = submit(fleet.url, flac(job_samples))
        wait_for(lambda: len(_holders(fleet)["sync"]) == 2, 120, "both workers holding the request's segments")
        [(holder,)] = query(fleet.db, "SELECT holder FROM works WHERE kind = 'sync'")
        victim = next(name for name in fleet.names if not holder.startswith(name + "-"))
        fleet.signal_instance(victim, signal.SIGKILL)  # a sibling, mid-batch
        response = answer.result(timeout=600)
    assert response.status_code == 200, response.text
    check_answer(response.json(), sync_text, len(sync_samples) / 16_000)
    final = wait_job(fleet.url, job["id"], 600)
    assert final["status"] == "succeeded" and final["progress"]["segments_failed"] == 0, final
    srt = requests.get(f"{fleet.url}/v1/jobs/{job['id']}/result?response_format=srt", timeout=30).text
    check_cues(srt, len(job_samples) / 16_000)
    result = requests.get(f"{fleet.url}/v1/jobs/{job['id']}/result", timeout=30).json()
    assert word_error_rate([job_text], [result["text"]]) <= WER_BOUND


def test_kill_9_of_the_worker_holding_the_client_replays_onto_the_same_work(fleet):
    samples, text = build(180)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post_sync, fleet, flac(samples), "kill-holder")
        # Killed once the work is cut (a kill mid-cut is cut again: the store test).
        wait_for(lambda: _holders(fleet)["sync"] and query(
            fleet.db, "SELECT status FROM works WHERE kind = 'sync'") == [("running",)], 120,
            "the request's segments all queued and being transcribed")
        [(holder,)] = query(fleet.db, "SELECT holder FROM works WHERE kind = 'sync'")
        victim = next(name for name in fleet.names if holder.startswith(name + "-"))
        fleet.signal_instance(victim, signal.SIGKILL)
        response = answer.result(timeout=600)
    assert response.status_code == 200, response.text
    survivor = response.headers["X-ASR-Worker"]
    assert survivor != victim  # Nginx replayed it ...
    log = (fleet.run_dir / "logs" / f"{survivor}.log").read_text(errors="replace")
    assert "request kill-holder: joined work" in log  # ... and it waited on the same work, not a new one
    check_answer(response.json(), text, len(samples) / 16_000)


def test_a_three_hour_file_is_refused_synchronously_at_once_and_done_as_a_job(fleet):
    samples, text = build(3 * 3600, speech_every_s=3600)
    data = flac(samples)
    for path, field in (("/asr", "lang"), ("/v1/audio/transcriptions", "language")):
        started = time.monotonic()
        response = requests.post(fleet.url + path, files={"file": ("3h.flac", data)}, data={field: "en"},
                                 timeout=60)
        assert response.status_code == 413 and time.monotonic() - started < 5, response.text
        assert "the limit is 7200 s" in response.text and "POST /v1/jobs" in response.text
    job = submit(fleet.url, data, name="3h.flac", language="en")
    seen = []
    final = wait_job(fleet.url, job["id"], 600, on_poll=seen.append)
    assert final["status"] == "succeeded", final
    assert final["duration"] == pytest.approx(3 * 3600, abs=1)
    assert any(body["status"] == "running" for body in seen), [b["status"] for b in seen]
    assert all(body["progress"]["eta_s"] is not None for body in seen)
    result = requests.get(f"{fleet.url}/v1/jobs/{job['id']}/result?response_format=verbose_json", timeout=30).json()
    assert word_error_rate([text], [result["text"]]) <= WER_BOUND
    assert result["segments"][-1]["start"] > 2 * 3600  # the last round of clips, at its place


def test_twenty_jobs_at_once_survive_stop_serve_and_a_rolling_restart(fleet):
    samples, text = build(60)
    data = flac(samples)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        jobs = list(pool.map(lambda n: submit(fleet.url, data, name=f"talk-{n}.flac"), range(20)))
    assert len({job["id"] for job in jobs}) == 20
    fleet.cli("stop", timeout=180)
    unfinished = query(fleet.db, "SELECT count(*) FROM works WHERE kind = 'job' AND status NOT IN "
                                 "('succeeded', 'failed', 'cancelled')")[0][0]
    print(f"after make stop: {unfinished} of 20 jobs unfinished")
    fleet.start()
    fleet.wait_settled(2, timeout=120)
    restart = threading.Thread(target=fleet.cli, args=("rolling-restart",), kwargs={"timeout": 400})
    restart.start()
    finals = [wait_job(fleet.url, job["id"], 600) for job in jobs]
    restart.join(timeout=400)
    assert [f["status"] for f in finals] == ["succeeded"] * 20, [f["error"] for f in finals]
    texts = [requests.get(f"{fleet.url}/v1/jobs/{job['id']}/result?response_format=text", timeout=30).text
             for job in jobs]
    assert word_error_rate([text] * 20, texts) <= WER_BOUND
    assert unfinished > 0  # the stop really caught jobs in the middle


def test_the_cli_writes_results_beside_or_into_out_and_ctrl_c_cancels_its_jobs(fleet, tmp_path, audio_dir):
    samples, text = build(150)
    (tmp_path / "talk.flac").write_bytes(flac(samples))
    (tmp_path / "jfk.flac").write_bytes((audio_dir / "jfk.flac").read_bytes())
    cli = [sys.executable, str(REPO / "scripts" / "transcribe.py"), "--url", fleet.url]
    done = subprocess.run(cli + [str(tmp_path / "talk.flac"), str(tmp_path / "jfk.flac"), "--out",
                                 str(tmp_path / "out")], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "talk.flac" in done.stderr and "100%" in done.stderr  # the progress bars
    check_cues((tmp_path / "out" / "talk.srt").read_text(), len(samples) / 16_000)
    assert "ask not what your country" in " ".join((tmp_path / "out" / "jfk.srt").read_text().lower().split())
    beside = subprocess.run(cli + ["--format", "text", str(tmp_path / "talk.flac")], capture_output=True,
                            text=True, timeout=300, check=False)
    assert beside.returncode == 0 and word_error_rate([text], [(tmp_path / "talk.txt").read_text()]) <= WER_BOUND
    long_samples, _ = build(600)
    (tmp_path / "long.flac").write_bytes(flac(long_samples))
    running = subprocess.Popen(cli + [str(tmp_path / "long.flac")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for(lambda: query(fleet.db, "SELECT id FROM works WHERE kind = 'job' AND filename = 'long.flac' "
                                     "AND status NOT IN ('succeeded', 'failed', 'cancelled')"), 60, "the job")
    [(job_id,)] = query(fleet.db, "SELECT id FROM works WHERE filename = 'long.flac'")
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=60)
    assert running.returncode == 130 and f"cancelled job {job_id}" in stderr, stderr
    assert requests.get(f"{fleet.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "cancelled"
