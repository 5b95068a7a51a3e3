"""The HTTP API on a real app with the embedded engine, through Flask's client."""

import io
import os
import tempfile

import pytest

from app import create_app
from app.settings import Settings

pytestmark = pytest.mark.worker

LIBRIVOX = "sense_and_sensibility_01_austen_64kb-0890.wav"


def upload(path, field="file", **form):
    return {field: (io.BytesIO(path.read_bytes()), path.name), **form}


def test_asr_returns_srt_stats_segments_and_model(client, audio_dir):
    response = client.post("/asr", data=upload(audio_dir / LIBRIVOX))
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["code"] == 0 and body["msg"] == "ok"
    assert body["data"].startswith("1\n00:00:")
    assert "selfish" in body["text"]
    stats = body["stats"]
    assert stats["total_segments"] == len(body["segments"]) >= 1
    assert stats["failed_segments"] == 0 and stats["success_rate"] == 1.0
    assert body["model"] == "pocketsphinx/en-us" and body["engine"] == "pocketsphinx"
    assert body["worker"] == "test-worker" and body["language"] == "en"
    assert all(s["end"] > s["start"] for s in body["segments"])
    assert response.headers["X-ASR-Worker"] == "test-worker"


def test_asr_simple_returns_plain_text_in_one_segment(client, audio_dir):
    body = client.post("/asr_simple", data=upload(audio_dir / LIBRIVOX)).get_json()
    assert body["stats"]["total_segments"] == 1
    assert body["data"] == body["text"] and "selfish" in body["data"]


def test_request_id_is_echoed_or_made(client):
    assert client.get("/health", headers={"X-Request-ID": "abc-1"}).headers["X-Request-ID"] == "abc-1"
    assert len(client.get("/health").headers["X-Request-ID"]) == 32


@pytest.mark.parametrize("endpoint", ["/asr", "/asr_simple", "/v1/audio/transcriptions"])
def test_missing_file_field_is_400_in_the_endpoint_shape(client, audio_dir, endpoint):
    response = client.post(endpoint, data=upload(audio_dir / LIBRIVOX, field="audio"))
    assert response.status_code == 400
    body = response.get_json()
    message = "missing multipart file field 'file' (got: audio)"
    if endpoint.startswith("/v1/"):
        assert body["error"]["message"] == message
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == "file"
    else:
        assert body == {"code": 400, "msg": message}


def test_unsupported_language_is_422(client, audio_dir):
    response = client.post("/asr", data=upload(audio_dir / LIBRIVOX, lang="zh"))
    assert response.status_code == 422
    assert "not supported by pocketsphinx/en-us" in response.get_json()["msg"]


def test_edge_files_get_4xx_and_the_worker_keeps_serving(client, audio_dir):
    for path in sorted((audio_dir / "edge").glob("*.wav")):
        response = client.post("/asr", data=upload(path))
        assert response.status_code in (400, 415), (path.name, response.status_code)
        assert response.get_json()["code"] == response.status_code
    assert client.get("/health").status_code == 200


def test_unknown_route_and_method_use_the_error_shape(client):
    assert client.get("/nope").get_json()["code"] == 404
    response = client.get("/v1/audio/transcriptions")
    assert response.status_code == 405 and "error" in response.get_json()


def test_requests_leave_no_temp_files(client, audio_dir, tmp_path, monkeypatch):
    # A private temp folder: the shared /tmp changes under other processes.
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    client.post("/asr", data=upload(audio_dir / "jfk.flac"))
    client.post("/asr", data=upload(audio_dir / "edge" / "evil.wav"))
    client.post("/asr", data={"file": (io.BytesIO(b"\x00" * 2_000_000), "big.m4a")})
    client.post("/asr", data={"file": (io.BytesIO(b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 5000), "x.m4a")})
    assert os.listdir(private) == []


def test_stats_and_metrics_count_requests(client, audio_dir):
    client.post("/asr", data=upload(audio_dir / LIBRIVOX))
    stats = client.get("/stats").get_json()
    assert stats["total_requests"] >= 1 and stats["successful_requests"] >= 1
    assert stats["audio_seconds"] > 0 and 0 < stats["real_time_factor"]
    assert stats["latency_ms"]["p95"] >= stats["latency_ms"]["p50"] > 0
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'asr_requests_total{endpoint="asr.asr",status="200"}' in metrics
    assert "asr_batch_size_bucket" in metrics and "asr_queue_depth" in metrics


def test_upload_and_duration_limits_are_413(audio_dir):
    app = create_app(Settings(engine="pocketsphinx", max_upload_bytes=500_000,
                              max_audio_seconds=5, max_simple_seconds=2))
    assert app.extensions["asr"].wait_ready(60)
    client = app.test_client()
    response = client.post("/asr", data=upload(audio_dir / "jfk.flac"))
    assert response.status_code == 413 and "the limit is 500000 bytes" in response.get_json()["msg"]
    response = client.post("/asr", data=upload(audio_dir / "sense_and_sensibility_01_austen_64kb-0870.wav"))
    assert response.status_code == 413, response.get_json()
    assert "the limit is 5 s" in response.get_json()["msg"]
    response = client.post("/asr_simple", data=upload(audio_dir / "cards005.wav"))
    assert response.status_code == 413 and "the limit is 2 s" in response.get_json()["msg"]


def test_a_model_that_cannot_load_reports_broken_with_the_reason(tmp_path):
    app = create_app(Settings(engine="funasr", model=str(tmp_path / "missing-model")))
    transcriber = app.extensions["asr"]
    assert not transcriber.wait_ready(60)
    response = app.test_client().get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "broken" and "missing-model" in body["reason"]
    assert "\n" not in body["reason"]


def test_api_keys_are_checked_before_any_work(tmp_path, audio_dir):
    keys = tmp_path / "keys"
    keys.write_text("# fleet keys\nsecret-one\n\nsecret-two\n")
    app = create_app(Settings(engine="pocketsphinx", api_key_file=str(keys)), start=False)
    client = app.test_client()
    response = client.post("/asr", data=upload(audio_dir / "cards001.wav"))
    assert response.status_code == 401 and "missing API key" in response.get_json()["msg"]
    response = client.post("/v1/audio/transcriptions", data=upload(audio_dir / "cards001.wav"),
                           headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.get_json()["error"]["message"] == "invalid API key"
    # A valid key passes the check; the model is not loaded (start=False), so 503.
    response = client.post("/asr", data=upload(audio_dir / "cards001.wav"),
                           headers={"Authorization": "Bearer secret-two"})
    assert response.status_code == 503
    assert client.get("/health").status_code == 503  # open, and honest: not loaded
    # The page and its script hold no data: open, so a person can enter the key there.
    assert client.get("/").status_code == 200 and client.get("/static/page.js").status_code == 200
    for path in ("/openapi.json", "/v1/models"):
        assert client.get(path).status_code == 401, path


def test_an_empty_key_file_refuses_to_start(tmp_path):
    from app.errors import ConfigError

    (tmp_path / "keys").write_text("# none yet\n")
    with pytest.raises(ConfigError, match="holds no keys"):
        create_app(Settings(engine="pocketsphinx", api_key_file=str(tmp_path / "keys")), start=False)
