"""The bad-input catalogue's machinery: the worker the rows go to, the trap
its playlists point at, the media the rows are built from, what a row is,
and what running one checks.

The rows themselves are in tests/test_bad_input_audio.py (broken, lying and
oversized sound) and tests/test_bad_input_requests.py (what is not sound,
points elsewhere, or is a malformed request); both go to one worker, started
once (conftest.py `catalogue_worker`), so the check after them covers every row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import requests
import soundfile
from machine import Worker
from speech import encode, ffmpeg

SPEECH = "sense_and_sensibility_01_austen_64kb-0870.wav"  # 7.1 s, 16 kHz mono
MAX_AUDIO_SECONDS = 600
MAX_SIMPLE_SECONDS = 60
MAX_UPLOAD_MB = 8
MAX_REASON_CHARS = 300  # app.errors.MAX_MESSAGE_CHARS
ASR, SIMPLE, OPENAI = "/asr", "/asr_simple", "/v1/audio/transcriptions"
# How long a row may take on a loaded 2-core machine (other test runs beside
# it). The default covers decoding and transcribing the 7 s clip a few
# times over; a refusal that read the whole hour it was sent would take
# minutes (Silero VAD alone reads an hour in about 40 s), so QUICK still tells
# "refused from the header" from "refused after the work".
WITHIN_S = 20.0
QUICK_S = 8.0


class Trap:
    """A loopback port that records every connection: playlists point here."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    self.connections.append(conn.recv(1024))
                except OSError:
                    self.connections.append(b"")


class Kit:
    """What builders need: the recordings, the trap's URL, cached encodings."""

    def __init__(self, audio_dir: Path, scratch: Path, trap: Trap):
        self.audio_dir = audio_dir
        self.scratch = scratch
        self.trap_url = f"http://127.0.0.1:{trap.port}"
        self._cache: dict[str, bytes] = {}

    @property
    def speech_path(self) -> Path:
        return self.audio_dir / SPEECH

    def speech(self) -> np.ndarray:
        return soundfile.read(self.speech_path, dtype="float32")[0]

    def encoded(self, encoding: str) -> bytes:
        """The speech clip as a real file of speech.ENCODINGS[`encoding`], made once by ffmpeg."""
        if encoding not in self._cache:
            self._cache[encoding] = encode(self.speech_path, encoding, self.scratch)
        return self._cache[encoding]

    def silence(self, name: str, rate: int, layout: str, seconds: float, *args: str) -> bytes:
        """Silence from ffmpeg's null source, compressed; made once."""
        if name not in self._cache:
            self._cache[name] = ffmpeg(
                "-f", "lavfi", "-i", f"anullsrc=r={rate}:cl={layout}", "-t", str(seconds), *args, "pipe:1")
        return self._cache[name]


@dataclasses.dataclass
class Served:
    worker: Worker
    pid: int
    tmpdir: Path
    trap: Trap
    kit: Kit
    sent: int = 0


@contextlib.contextmanager
def serve_catalogue(start: Callable[..., Worker], audio_dir: Path, scratch: Path) -> Iterator[Served]:
    """The catalogue's worker, started with `start` (machine.workers), with
    its limits and an empty temp folder of its own the catalogue must leave so."""
    worker = start(private_tmp=True, ASR_ENGINE="pocketsphinx", ASR_INSTANCE_NAME="bad-input",
                   ASR_MAX_AUDIO_SECONDS=str(MAX_AUDIO_SECONDS),
                   ASR_MAX_SIMPLE_SECONDS=str(MAX_SIMPLE_SECONDS), ASR_MAX_UPLOAD_MB=str(MAX_UPLOAD_MB))
    trap = Trap()
    try:
        yield Served(worker, worker.serving_pid(), worker.tmpdir, trap, Kit(audio_dir, scratch, trap))
    finally:
        trap.sock.close()


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    build: Callable[[Kit], bytes | dict]
    endpoint: str
    status: int
    # In the reason for refusals; in the body for a 200.
    fragment: str
    form: dict = dataclasses.field(default_factory=dict)
    # For 200s: the decoded length in seconds, (low, high), and whether speech was found.
    duration: tuple[float, float] | None = None
    speech: bool | None = None
    within_s: float = WITHIN_S
    # Growth of the worker's peak RSS (VmHWM) this row may cause, in MB.
    peak_mb: float | None = None


def speech_file(kit: Kit) -> bytes:
    return kit.speech_path.read_bytes()


def reason(response: requests.Response) -> str:
    body = response.json()
    return body["error"]["message"] if "error" in body else body["msg"]


def batches_run(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    return float(re.search(r"^asr_batch_size_count (\S+)$", text, re.MULTILINE).group(1))


def peak_rss_mb(pid: int, *, reset: bool = False) -> float:
    """The process's peak RSS (VmHWM); with reset, first lowered to its RSS now."""
    if reset:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux >= 4.0)
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def check_row(served: Served, row: Row) -> None:
    """Sends the row to the catalogue's worker: its status and reason, quickly,
    in the endpoint's JSON shape, bounded, and for a refusal no model work."""
    built = row.build(served.kit)
    request_id = f"bad-input-{row.name}-{uuid.uuid4().hex[:8]}"
    kwargs = built if isinstance(built, dict) else {"files": {"file": ("upload", built)}, "data": row.form}
    kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), "X-Request-ID": request_id}}
    url = served.worker.url
    batches = batches_run(url)
    peak = peak_rss_mb(served.pid, reset=row.peak_mb is not None)

    started = time.monotonic()
    served.sent += 1
    response = requests.post(url + row.endpoint, timeout=120, **kwargs)
    elapsed = time.monotonic() - started

    assert response.status_code == row.status, response.text[:500]
    assert response.headers["X-Request-ID"] == request_id
    assert response.headers["X-ASR-Worker"] == "bad-input"
    assert elapsed < row.within_s, f"{row.name} took {elapsed:.1f} s"
    if row.status == 200:
        assert row.fragment in response.text
        body = response.json()
        if row.duration:
            low, high = row.duration
            assert low <= body["duration"] <= high, body["duration"]
        if row.speech is not None:
            assert bool(body["segments"]) == row.speech, body["segments"]
    else:
        message = reason(response)
        assert row.fragment in message
        assert "\n" not in message and len(message) <= MAX_REASON_CHARS
        assert "Traceback" not in response.text
        if row.endpoint.startswith("/v1/"):
            assert response.json()["error"]["type"] == "invalid_request_error"
        else:
            assert response.json()["code"] == row.status
        # Refused before any model work.
        assert batches_run(url) == batches
    if row.peak_mb is not None:
        growth = peak_rss_mb(served.pid) - peak
        print(f"{row.name}: worker peak RSS grew {growth:.0f} MB")
        assert growth < row.peak_mb
