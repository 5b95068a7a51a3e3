"""/v1/jobs and the planned synchronous path on one real worker app
(Whisper tiny.en, its puller and a SQLite store in a temp folder), with API
keys on so that one client's jobs are invisible to another."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile

from app.engines import DecodeOptions
from app.jobs.store import SYNC
from app.settings import Settings
from tests.speech import ENGLISH, reference, word_error_rate

pytestmark = pytest.mark.worker

KEYS = ("key-alice", "key-bob")
ALICE = {"Authorization": f"Bearer {KEYS[0]}"}
BOB = {"Authorization": f"Bearer {KEYS[1]}"}
MAX_SYNC = 40


def recording(audio_dir, repeats: int, silence_s: float = 0.7, tail_silence_s: float = 0.0):
    """The English clips, `repeats` times over, as 16 kHz FLAC bytes, with
    their references in order."""
    import soxr

    clips, texts = [], []
    for name in ENGLISH:
        samples, rate = soundfile.read(audio_dir / name, dtype="float32")
        samples = samples.mean(axis=1) if samples.ndim > 1 else samples
        clips.append(soxr.resample(samples, rate, 16_000).astype(np.float32) if rate != 16_000 else samples)
        texts.append(reference(name))
    gap = np.zeros(int(silence_s * 16_000), np.float32)
    parts = [p for _ in range(repeats) for clip in clips for p in (clip, gap)]
    parts.append(np.zeros(int(tail_silence_s * 16_000), np.float32))
    buffer = io.BytesIO()
    soundfile.write(buffer, np.concatenate(parts), 16_000, format="FLAC")
    return buffer.getvalue(), " ".join(texts * repeats)


@pytest.fixture(scope="module")
def app(tmp_path_factory, ready_app, audio_dir):
    folder = tmp_path_factory.mktemp("jobs")
    (folder / "keys").write_text("\n".join(KEYS) + "\n")
    return ready_app(Settings(engine="whisper", model="tiny.en", instance_name="jobs-test", cpu_threads=1,
                              job_db=str(folder / "jobs.db"), api_key_file=str(folder / "keys"),
                              fanout_min_seconds=20, max_sync_seconds=MAX_SYNC, assumed_rtf=0.1))


@pytest.fixture()
def client(app):
    return app.test_client()


def submit(client, data: bytes, headers=ALICE, **form):
    return client.post("/v1/jobs", data={"file": (io.BytesIO(data), "talk.flac"), **form}, headers=headers)


def wait_finished(client, location: str, headers=ALICE, timeout: float = 180) -> tuple[dict, list[dict]]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(location, headers=headers).get_json()
        seen.append(body)
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body, seen
        time.sleep(0.2)
    raise AssertionError(f"job not finished in {timeout} s: {seen[-1]}")


def test_a_job_reports_progress_and_its_result_in_every_format(client, audio_dir):
    data, text = recording(audio_dir, 3)
    response = submit(client, data, response_format="srt")
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    # A worker may already be cutting it by the time the 202 is written.
    assert body["status"] in ("queued", "running") and response.headers["Location"] == f"/v1/jobs/{body['id']}"
    final, seen = wait_finished(client, response.headers["Location"])
    assert final["status"] == "succeeded", final
    progress = final["progress"]
    assert progress["segments_done"] == progress["segments_total"] >= 3 and progress["segments_failed"] == 0
    assert progress["audio_seconds_done"] == progress["audio_seconds_total"] > 60 and progress["eta_s"] == 0
    assert any(b["status"] == "running" and b["progress"]["segments_total"] for b in seen)
    assert all(b["progress"]["eta_s"] is not None for b in seen)
    result = f"/v1/jobs/{body['id']}/result"
    srt = client.get(result, headers=ALICE).get_data(as_text=True)  # the format asked for at submission
    assert srt.startswith("1\n00:00:00,") and srt.count(" --> ") >= 6
    as_json = client.get(result + "?response_format=json", headers=ALICE).get_json()
    assert word_error_rate([text], [as_json["text"]]) <= 0.15, as_json["text"]
    assert as_json["usage"] == {"type": "duration", "seconds": body["duration"]}
    assert client.get(result + "?response_format=vtt", headers=ALICE).get_data(as_text=True).startswith("WEBVTT")
    assert client.get(result + "?response_format=text", headers=ALICE).get_data(as_text=True) == as_json["text"]
    verbose = client.get(result + "?response_format=verbose_json", headers=ALICE).get_json()
    times = [t for s in verbose["segments"] for t in (s["start"], s["end"])]
    assert times == sorted(times) and times[-1] <= verbose["duration"]
    assert body["id"] in [job["id"] for job in client.get("/v1/jobs", headers=ALICE).get_json()["data"]]


def test_a_long_synchronous_request_through_the_queue_matches_the_in_process_answer(app, client, audio_dir):
    data, text = recording(audio_dir, 1, silence_s=1.5)  # ~33 s: over fanout_min_seconds
    pulled = app.extensions["jobs"].puller.pulled
    queued = client.post("/asr", data={"file": (io.BytesIO(data), "a.flac"), "lang": "en"}, headers=ALICE)
    assert queued.status_code == 200, queued.get_json()
    assert app.extensions["jobs"].puller.pulled > pulled  # it went through the queue
    samples, _ = soundfile.read(io.BytesIO(data), dtype="float32")
    direct = app.extensions["asr"].transcribe(samples, DecodeOptions(language="en"), use_vad=True)
    segments = queued.get_json()["segments"]
    # The same windows, mapped back the same way; the words may differ a
    # little (int16 PCM in the store, other batch neighbours in the model).
    assert segments[0]["start"] == round(direct.segments[0].start, 3)
    assert abs(segments[-1]["end"] - direct.segments[-1].end) < 1.0
    assert word_error_rate([" ".join(s.text for s in direct.segments)], [queued.get_json()["text"]]) <= 0.05
    assert word_error_rate([text], [queued.get_json()["text"]]) <= 0.15


def test_a_recording_the_fleet_cannot_finish_in_time_is_refused_at_once(app, client, audio_dir):
    data, _ = recording(audio_dir, 1, tail_silence_s=900)
    batches = app.extensions["asr"].batcher.batches_done
    for path, field in (("/asr", "lang"), ("/v1/audio/transcriptions", "language")):
        started = time.monotonic()
        response = client.post(path, data={"file": (io.BytesIO(data), "long.flac"), field: "en"}, headers=ALICE)
        body = response.get_json()
        message = body["msg"] if "msg" in body else body["error"]["message"]
        assert response.status_code == 413 and time.monotonic() - started < 3, body
        assert f"over the {MAX_SYNC} s limit" in message and "POST /v1/jobs" in message
    assert app.extensions["asr"].batcher.batches_done == batches  # refused before any model work


def test_bad_ids_foreign_ids_and_a_cancelled_jobs_result_get_clear_4xx(app, client, audio_dir):
    assert client.get("/v1/jobs/../../etc", headers=ALICE).status_code == 404
    bad = client.get("/v1/jobs/not-a-job", headers=ALICE)
    assert bad.status_code == 400 and "not a job id" in bad.get_json()["error"]["message"]
    assert client.get("/v1/jobs/" + "0" * 32 + "/result", headers=ALICE).status_code == 404
    sync_id, _ = app.extensions["jobs"].store.create(kind=SYNC, owner="", key="internal", options={},
                                                     filename="", duration=1, holder=None, upload=None)
    assert client.get(f"/v1/jobs/{sync_id}", headers=ALICE).status_code == 404  # internal work is no job
    data, _ = recording(audio_dir, 2)
    location = submit(client, data).headers["Location"]
    for method in (client.get, client.delete):  # another key's job does not exist for it
        foreign = method(location, headers=BOB)
        assert foreign.status_code == 404 and "no job" in foreign.get_json()["error"]["message"]
    assert location.rsplit("/", 1)[1] not in str(client.get("/v1/jobs", headers=BOB).get_json())
    early = client.get(location + "/result", headers=ALICE)
    assert early.status_code == 409 and "not finished" in early.get_json()["error"]["message"]
    deleted = client.delete(location, headers=ALICE)
    assert deleted.status_code == 200 and deleted.get_json()["status"] == "cancelled"
    assert client.get(location, headers=ALICE).get_json()["status"] == "cancelled"
    gone = client.get(location + "/result", headers=ALICE)
    assert gone.status_code == 410 and "cancelled" in gone.get_json()["error"]["message"]
    assert client.delete(location, headers=ALICE).status_code == 200  # the tombstone goes too
    assert client.get(location, headers=ALICE).status_code == 404


@pytest.mark.parametrize("form, upload, status, words", [
    ({}, b"", 400, "empty file"),
    ({}, b"just some text, not audio at all" * 10, 415, "not a recognised audio format"),
    ({"response_format": "docx"}, None, 400, "response_format 'docx'"),
    ({"language": "tlh"}, None, 400, "'tlh' is not supported"),  # OpenAI's status, as /v1/audio
])
def test_bad_job_submissions_are_refused_at_once(client, audio_dir, form, upload, status, words):
    data = (audio_dir / "jfk.flac").read_bytes() if upload is None else upload
    response = submit(client, data, **form)
    assert response.status_code == status and words in response.get_json()["error"]["message"]
    missing = client.post("/v1/jobs", data={"language": "en"}, headers=ALICE)
    assert missing.status_code == 400 and "'file'" in missing.get_json()["error"]["message"]
