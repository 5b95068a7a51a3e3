"""Fuzzing the decoder and the upload endpoints with hypothesis.

The decoder (`app.audio.decode`) may only return 16 kHz mono float32 or raise
an `ASRError` with a one-line reason; an endpoint may only answer below 500;
neither may leave a file in the temp folder. The default run is bounded and
derandomized (the same examples every time, about half a minute); `make fuzz`
runs the `fuzz_long` tests, random and many times larger, also against a real
Gunicorn worker that must still be the same healthy process at the end.
ASR_FUZZ_EXAMPLES sets the long runs' examples per test.
"""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import psutil
import pytest
import requests
import soundfile
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app import audio
from app.errors import ASRError

pytestmark = pytest.mark.worker

MAX_REASON_CHARS = 300  # app.errors.MAX_MESSAGE_CHARS
LIMITS = {"max_seconds": 600.0, "ffmpeg_timeout": 20.0}
ENDPOINTS = ["/asr", "/asr_simple", "/v1/audio/transcriptions"]

settings.register_profile(
    "asr-fuzz", max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large])
settings.register_profile(
    "asr-fuzz-long", max_examples=int(os.environ.get("ASR_FUZZ_EXAMPLES", "3000")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large])
BOUNDED = settings.get_profile("asr-fuzz")
LONG = settings.get_profile("asr-fuzz-long")


# -- seeds: real headers written by libsndfile --------------------------------------------------


def _encode(rate: int, channels: int, fmt: str, subtype: str, seconds: float = 0.3) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    samples = np.repeat(tone[:, None], channels, axis=1) if channels > 1 else tone
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


SEEDS = {
    "wav-s16-16k-mono": _encode(16000, 1, "WAV", "PCM_16"),
    "wav-s24-44k-stereo-extensible": _encode(44100, 2, "WAV", "PCM_24"),
    "wav-f32-8k-mono": _encode(8000, 1, "WAV", "FLOAT"),
    "flac-s16-16k-mono": _encode(16000, 1, "FLAC", "PCM_16"),
    "flac-s24-48k-stereo": _encode(48000, 2, "FLAC", "PCM_24"),
    "ogg-vorbis-22k": _encode(22050, 1, "OGG", "VORBIS"),
}
# Where each format keeps the fields worth breaking: WAV's fmt and data
# headers, FLAC's STREAMINFO, Ogg's first page.
HEADER_BYTES = 64
INTERESTING_32 = [0, 1, 2, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 16000, 44100]


@st.composite
def mutated(draw, names=tuple(SEEDS)):
    """A real file with a few header fields, bytes or lengths broken."""
    data = bytearray(SEEDS[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        in_header = draw(st.booleans())
        pos = draw(st.integers(0, min(HEADER_BYTES, len(data)) - 1 if in_header else len(data) - 1))
        kind = draw(st.sampled_from(["flip", "byte", "int32", "int16", "truncate", "insert", "delete"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind in ("int32", "int16"):
            width = 4 if kind == "int32" else 2
            value = draw(st.sampled_from(INTERESTING_32) | st.integers(0, 2**32 - 1)) % 2 ** (8 * width)
            order = draw(st.sampled_from(["little", "big"]))  # WAV is little-endian, FLAC big
            data[pos:pos + width] = value.to_bytes(width, order)
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data)


RANDOM_BYTES = st.binary(max_size=4096)
ANY_UPLOAD = st.one_of(RANDOM_BYTES, mutated(), st.sampled_from(list(SEEDS.values())))


# -- the decoder --------------------------------------------------------------------------------


def check_decode(data: bytes) -> None:
    try:
        samples = audio.decode(data, **LIMITS)
    except ASRError as error:
        assert 400 <= error.status < 500, (error.status, error.message)
        assert error.message and "\n" not in error.message and len(error.message) <= MAX_REASON_CHARS
        return
    assert isinstance(samples, np.ndarray) and samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) >= audio.MIN_SECONDS * audio.SAMPLE_RATE
    assert len(samples) <= (LIMITS["max_seconds"] + 1) * audio.SAMPLE_RATE
    assert np.isfinite(samples).all()


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """Points this process and its children (ffmpeg) at an empty temp folder."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    yield folder
    assert list(folder.iterdir()) == [], "a temp file was left behind"


def test_every_seed_decodes():
    for name, data in SEEDS.items():
        assert len(audio.decode(data, **LIMITS)) > 0, name


@BOUNDED
@given(data=RANDOM_BYTES)
def test_decode_random_bytes(private_tmp, data):
    check_decode(data)


@BOUNDED
@given(data=mutated())
def test_decode_mutated_real_headers(private_tmp, data):
    check_decode(data)


@pytest.mark.fuzz_long
@LONG
@given(data=st.one_of(st.binary(max_size=65536), mutated()))
def test_decode_long(private_tmp, data):
    check_decode(data)


# -- the endpoints through Flask's test client --------------------------------------------------

FIELD_NAMES = st.sampled_from(["file", "file", "file", "audio", "File", "files[]"]) | st.text(max_size=12)
FORM_VALUES = st.sampled_from(
    ["", "auto", "en", "zh", "EN-us", "json", "text", "srt", "vtt", "verbose_json", "xml", "segment",
     "word", "whisper-1", "0.0"]) | st.text(max_size=40)
FORM = st.dictionaries(
    st.sampled_from(["lang", "language", "response_format", "timestamp_granularities[]", "model",
                     "prompt", "temperature"]) | st.text(min_size=1, max_size=12),
    FORM_VALUES, max_size=4)
CONTENT_TYPES = st.sampled_from([
    "multipart/form-data; boundary=XyZ", "multipart/form-data", "multipart/form-data; boundary=",
    "application/json", "application/x-www-form-urlencoded", "text/plain", "audio/wav",
    "application/octet-stream", ""]) | st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                                   max_size=60)
# (Newlines and non-Latin-1 in a header are refused by the client libraries
# before sending, and Gunicorn refuses them anyway.)


@st.composite
def raw_multipart(draw):
    """A hand-written multipart body: bytes in names, odd headers, missing ends."""
    name = draw(st.sampled_from([b"file", b"audio", b""]) | st.binary(max_size=16))
    filename = draw(st.sampled_from([b"a.wav", b"", b"../../etc/passwd", b"\xff\xfe"])
                    | st.binary(max_size=16))
    extra = draw(st.sampled_from([b"", b"Content-Type: audio/wav\r\n", b"Content-Length: 99999999\r\n",
                                  b"Content-Transfer-Encoding: base64\r\n"]))
    body = draw(ANY_UPLOAD)
    end = draw(st.sampled_from([b"\r\n--XyZ--\r\n", b"\r\n--XyZ", b"", b"\r\n--XyZ--"]))
    return (b'--XyZ\r\nContent-Disposition: form-data; name="' + name + b'"; filename="' + filename
            + b'"\r\n' + extra + b"\r\n" + body + end)


def check_response(response, request_id: str) -> None:
    event(f"status {response.status_code}")  # the spread shows with --hypothesis-show-statistics
    assert response.status_code < 500, (response.status_code, response.get_data()[:300])
    assert response.headers["X-Request-ID"] == request_id
    if response.status_code >= 400:
        body = response.get_json()
        message = body["error"]["message"] if "error" in body else body["msg"]
        assert message and "\n" not in message and len(message) <= MAX_REASON_CHARS


_count = iter(range(10**9))


@BOUNDED
@given(endpoint=st.sampled_from(ENDPOINTS), field=FIELD_NAMES, filename=st.text(max_size=30),
       content=ANY_UPLOAD, form=FORM)
def test_endpoints_with_random_uploads_and_fields(private_tmp, client, endpoint, field, filename,
                                                  content, form):
    request_id = f"fuzz-{next(_count)}"
    data = {**form, field: (io.BytesIO(content), filename or "upload")}
    response = client.post(endpoint, data=data, headers={"X-Request-ID": request_id})
    check_response(response, request_id)


@BOUNDED
@given(endpoint=st.sampled_from(ENDPOINTS), content_type=CONTENT_TYPES,
       body=st.one_of(raw_multipart(), st.binary(max_size=2048)))
def test_endpoints_with_raw_bodies(private_tmp, client, endpoint, content_type, body):
    request_id = f"fuzz-{next(_count)}"
    if body.startswith(b"--XyZ"):
        content_type = "multipart/form-data; boundary=XyZ"
    response = client.post(endpoint, data=body, headers={"X-Request-ID": request_id,
                                                         "Content-Type": content_type})
    check_response(response, request_id)


@pytest.mark.fuzz_long
@LONG
@given(endpoint=st.sampled_from(ENDPOINTS), field=FIELD_NAMES, filename=st.text(max_size=30),
       content=ANY_UPLOAD, form=FORM, raw=st.none() | raw_multipart())
def test_endpoints_long(private_tmp, client, endpoint, field, filename, content, form, raw):
    request_id = f"fuzz-{next(_count)}"
    if raw is None:
        data = {**form, field: (io.BytesIO(content), filename or "upload")}
        response = client.post(endpoint, data=data, headers={"X-Request-ID": request_id})
    else:
        response = client.post(endpoint, data=raw, headers={
            "X-Request-ID": request_id, "Content-Type": "multipart/form-data; boundary=XyZ"})
    check_response(response, request_id)


# -- the long run against a real Gunicorn worker ------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_worker(tmp_path_factory):
    from tests.conftest import Worker

    base = tmp_path_factory.mktemp("fuzz-worker")
    (base / "tmp").mkdir()
    worker = Worker({"ASR_ENGINE": "pocketsphinx", "ASR_INSTANCE_NAME": "fuzz",
                     "ASR_MAX_AUDIO_SECONDS": "600", "TMPDIR": str(base / "tmp")}, base / "worker.log")
    try:
        worker.wait_ready()
        (child,) = psutil.Process(worker.process.pid).children()
        yield worker, child.pid, base / "tmp"
    finally:
        worker.stop()


@pytest.mark.fuzz_long
def test_real_worker_survives_fuzzing(fuzz_worker):
    worker, pid, tmpdir = fuzz_worker
    session = requests.Session()

    @LONG
    @given(endpoint=st.sampled_from(ENDPOINTS), field=FIELD_NAMES, content=ANY_UPLOAD, form=FORM,
           raw=st.none() | raw_multipart())
    def fuzz(endpoint, field, content, form, raw):
        request_id = f"fuzz-{next(_count)}"
        headers = {"X-Request-ID": request_id}
        if raw is None:
            response = session.post(worker.url + endpoint, files={field: ("upload", content)},
                                    data=form, headers=headers, timeout=60)
        else:
            headers["Content-Type"] = "multipart/form-data; boundary=XyZ"
            response = session.post(worker.url + endpoint, data=raw, headers=headers, timeout=60)
        assert response.status_code < 500, (response.status_code, response.text[:300])
        assert response.headers["X-Request-ID"] == request_id

    fuzz()
    assert requests.get(worker.url + "/health", timeout=5).status_code == 200
    (child,) = psutil.Process(worker.process.pid).children()
    assert child.pid == pid, "the worker process was replaced: it crashed"
    assert list(tmpdir.iterdir()) == []
    assert "Traceback" not in worker.log_path.read_text(errors="replace")
