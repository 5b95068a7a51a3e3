"""The bad-input catalogue, part two: uploads that are not sound, point
elsewhere or are too big, and requests that are malformed, against the same
real Gunicorn worker as part one (tests/test_bad_input_audio.py).

Each row names an upload or a whole request, the endpoint, the status it
must get and a fragment of its one-line reason, checked as in part one. After
both parts the same worker process still answers /health, its private temp
folder is still empty, and nothing connected to the trap server the
playlists name.

Slow uploads (408) are refused by Nginx, in front of the worker: they are a
fleet guarantee (tests/test_fleet_boundaries.py), not tested here.
"""

from __future__ import annotations

import io
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import test_bad_input_audio
from bad_input import ASR, MAX_UPLOAD_MB, OPENAI, Kit, Row, check_row, speech_file
from speech import ffmpeg

pytestmark = pytest.mark.worker


def png(kit: Kit) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    pixels = zlib.compress(b"\x00\xff\x00\x00" * 4)  # 4 rows of one red pixel, filter 0
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 4, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def zipped_wav(kit: Kit) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(kit.speech_path, "speech.wav")
    return buffer.getvalue()


def video_only(kit: Kit) -> bytes:
    return ffmpeg("-f", "lavfi", "-i", "color=c=red:s=32x32:d=1", "-c:v", "mpeg4",
                  "-f", "matroska", "pipe:1")


def m3u(target: Callable[[Kit], str]) -> Callable[[Kit], bytes]:
    return lambda kit: f"#EXTM3U\n#EXTINF:7,\n{target(kit)}\n".encode()


def hls(target: Callable[[Kit], str]) -> Callable[[Kit], bytes]:
    return lambda kit: (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:8\n"
        f"#EXTINF:7.0,\n{target(kit)}\n#EXT-X-ENDLIST\n").encode()


def ffconcat(target: Callable[[Kit], str]) -> Callable[[Kit], bytes]:
    return lambda kit: f"ffconcat version 1.0\nfile '{target(kit)}'\nduration 7.1\n".encode()


LOCAL = lambda kit: str(kit.speech_path)  # a real file: followed, it would transcribe
FILE_URL = lambda kit: f"file://{kit.speech_path}"
HTTP_URL = lambda kit: f"{kit.trap_url}/speech.wav"


def request(**kwargs) -> Callable[[Kit], dict]:
    """A builder for a whole malformed request rather than an upload."""
    return lambda kit: kwargs


def upload_of(data: Callable[[Kit], bytes], field: str, **form: str) -> Callable[[Kit], dict]:
    return lambda kit: {"files": {field: ("upload.wav", data(kit))}, "data": form}


NOT_AUDIO = "not a recognised audio format"
MULTIPART = {"Content-Type": "multipart/form-data; boundary=xyz"}

ROWS = [
    # Upload size.
    Row("upload-1-kb-over-the-limit", lambda k: bytes(MAX_UPLOAD_MB * 2**20 + 1024), ASR, 413,
        f"the limit is {MAX_UPLOAD_MB * 2**20} bytes"),
    Row("upload-far-over-the-limit", lambda k: bytes(3 * MAX_UPLOAD_MB * 2**20), ASR, 413,
        f"the limit is {MAX_UPLOAD_MB * 2**20} bytes"),
    # Files that point elsewhere: ffmpeg reads only its pipe.
    Row("m3u-local-path", m3u(LOCAL), ASR, 415, NOT_AUDIO),
    Row("m3u-file-url", m3u(FILE_URL), ASR, 415, NOT_AUDIO),
    Row("m3u-http-url", m3u(HTTP_URL), ASR, 415, NOT_AUDIO),
    Row("hls-local-path", hls(LOCAL), ASR, 415, NOT_AUDIO),
    Row("hls-http-url", hls(HTTP_URL), ASR, 415, NOT_AUDIO),
    Row("ffconcat-local-path", ffconcat(LOCAL), ASR, 400, "Unsafe file name"),
    Row("ffconcat-http-url", ffconcat(HTTP_URL), ASR, 400, "Unsafe file name"),
    Row("pls-http-url", lambda k: f"[playlist]\nFile1={HTTP_URL(k)}\nNumberOfEntries=1\n".encode(),
        ASR, 415, "no audio stream"),
    Row("sdp-rtp-to-loopback",
        lambda k: (f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
                   f"m=audio {k.trap_url.rsplit(':', 1)[1]} RTP/AVP 0\n").encode(),
        ASR, 415, NOT_AUDIO),
    # Not audio.
    Row("plain-text", lambda k: b"this is plainly not audio\n" * 40, ASR, 415, NOT_AUDIO),
    Row("html", lambda k: b"<!doctype html><html><body><audio src=/etc/passwd></audio></body></html>",
        ASR, 415, NOT_AUDIO),
    Row("png-image", png, ASR, 415, "no audio stream"),
    Row("jpeg-header-only", lambda k: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200), ASR, 415,
        "no audio stream"),
    Row("pdf", lambda k: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", ASR, 415, NOT_AUDIO),
    Row("elf-binary", lambda k: Path(sys.executable).resolve().read_bytes()[:200_000], ASR, 415, NOT_AUDIO),
    Row("zip-holding-a-wav", zipped_wav, ASR, 415, NOT_AUDIO),
    Row("video-without-sound", video_only, ASR, 415, "no audio stream"),
    Row("two-megabytes-of-zeros", lambda k: bytes(2_000_000), ASR, 415, NOT_AUDIO),
    Row("seeded-random-bytes", lambda k: np.random.default_rng(5).bytes(50_000), ASR, 415, NOT_AUDIO),
    # Malformed requests.
    Row("wrong-field-name", upload_of(speech_file, "audio"), ASR, 400,
        "missing multipart file field 'file' (got: audio)"),
    Row("wrong-field-name-openai", upload_of(speech_file, "upload"), OPENAI, 400,
        "missing multipart file field 'file' (got: upload)"),
    Row("file-sent-as-a-text-field", request(files={"file": (None, "UklGRiQAAABXQVZF")}), ASR, 400,
        "missing multipart file field 'file' (got: none)"),
    Row("multipart-with-no-body", request(data=b"", headers=MULTIPART), ASR, 400,
        "missing multipart file field 'file'"),
    Row("multipart-never-closed",
        request(data=b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF',
                headers=MULTIPART), ASR, 400, "missing multipart file field 'file'"),
    Row("json-body", request(json={"file": "UklGRiQAAABXQVZF", "lang": "en"}), ASR, 400,
        "missing multipart file field 'file'"),
    Row("json-body-openai", request(json={"file": "UklGRiQAAABXQVZF", "model": "whisper-1"}), OPENAI, 400,
        "missing multipart file field 'file'"),
    # Fields.
    Row("unknown-language", speech_file, ASR, 422,
        "language 'klingon' is not supported by pocketsphinx/en-us",
        form={"lang": "klingon"}),
    Row("language-the-model-lacks-openai", speech_file, OPENAI, 400, "language 'zh' is not supported",
        form={"language": "zh"}),
    Row("language-with-nul-and-bidi", speech_file, ASR, 422, "is not supported",
        form={"lang": "\u202een\x00"}),
    Row("one-megabyte-language", speech_file, ASR, 422, "supported: auto, en", form={"lang": "x" * 2**20}),
    Row("unknown-response-format", speech_file, OPENAI, 400, "response_format 'xml' is not one of",
        form={"response_format": "xml"}),
    Row("one-megabyte-response-format", speech_file, OPENAI, 400, "is not one of json, text, srt",
        form={"response_format": "y" * 2**20}),
    Row("word-timestamps", speech_file, OPENAI, 400, "engine does not time words",
        form={"timestamp_granularities[]": "word"}),
]


def test_the_catalogue_has_at_least_30_distinct_rows():
    names = [row.name for row in [*test_bad_input_audio.ROWS, *ROWS]]
    assert len(names) == len(set(names)) >= 30


@pytest.mark.parametrize("row", [pytest.param(row, id=row.name) for row in ROWS])
def test_bad_upload_gets_its_status_and_reason(catalogue_worker, row):
    check_row(catalogue_worker, row)


def test_after_the_catalogue_the_same_worker_serves_and_left_nothing(catalogue_worker):
    """Runs after the rows of this file and, in a whole run, of
    test_bad_input_audio.py (it sorts first; the worker is shared): same
    pid, healthy, no temp file, no URL followed."""
    served = catalogue_worker
    response = requests.get(served.worker.url + "/health", timeout=5)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    (child,) = psutil.Process(served.worker.process.pid).children()
    assert child.pid == served.pid, "the worker process was replaced: it crashed"
    assert served.worker.process.poll() is None
    assert list(served.tmpdir.iterdir()) == []
    assert served.trap.connections == [], "ffmpeg followed a URL from an upload"
    log = served.worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log
    # Every row was answered and counted by the worker it was sent to.
    assert requests.get(served.worker.url + "/stats", timeout=5).json()["total_requests"] >= served.sent
