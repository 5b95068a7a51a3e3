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

import collections
import concurrent.futures
import dataclasses
import io
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import soundfile

pytestmark = pytest.mark.worker

CARDS = [f"cards00{i}.wav" for i in range(1, 6)]
LIBRIVOX_SHORT = "sense_and_sensibility_01_austen_64kb-0880.wav"  # 3 s
MAX_FD_GROWTH = 3
SHORT_MAX_RSS_GROWTH_MB = 50
LONG_MAX_RSS_GROWTH_MB = 100
# The long run's second half: by then nothing legitimate should still grow.
LONG_MAX_LATE_RSS_GROWTH_MB = 30


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of request in the mix, and the statuses it may get."""

    name: str
    weight: int
    endpoint: str
    statuses: frozenset[int]
    data: bytes | None = None
    field: str = "file"
    form: dict = dataclasses.field(default_factory=dict)
    raw: dict | None = None  # a whole request (json, bare body) instead of an upload
    method: str = "POST"


def ffmpeg(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", *args], input=stdin,
                          capture_output=True, timeout=60, check=True).stdout


def build_mix(audio_dir: Path, scratch: Path) -> list[Kind]:
    card = audio_dir / "cards002.wav"
    m4a = scratch / "card.m4a"
    ffmpeg("-y", "-i", str(card), "-c:a", "aac", "-movflags", "+faststart", str(m4a))
    encoded = {
        "mp3": ffmpeg("-i", str(card), "-c:a", "libmp3lame", "-f", "mp3", "pipe:1"),
        "ogg": ffmpeg("-i", str(card), "-c:a", "libvorbis", "-f", "ogg", "pipe:1"),
        "webm": ffmpeg("-i", str(card), "-c:a", "libopus", "-f", "webm", "pipe:1"),
        "m4a": m4a.read_bytes(),
        "flac-44k-stereo": ffmpeg("-i", str(card), "-ar", "44100", "-ac", "2", "-f", "flac", "pipe:1"),
    }
    nan = io.BytesIO()
    soundfile.write(nan, np.full(8000, np.nan, np.float32), 16000, format="WAV", subtype="FLOAT")
    hour = ffmpeg("-f", "lavfi", "-i", "anullsrc=r=1000:cl=mono", "-t", "3600", "-c:a", "flac",
                  "-frame_size", "32768", "-f", "flac", "pipe:1")
    ok = frozenset({200})
    # About 40% of requests are transcribed; the rest are refused or GETs.
    mix = [Kind(f"good-{name}", 2, "/asr", ok, (audio_dir / name).read_bytes()) for name in CARDS]
    mix += [
        Kind("good-librivox-simple", 1, "/asr_simple", ok, (audio_dir / LIBRIVOX_SHORT).read_bytes()),
        Kind("good-openai-srt", 1, "/v1/audio/transcriptions", ok, (audio_dir / CARDS[0]).read_bytes(),
             form={"response_format": "srt"}),
        Kind("good-openai-verbose", 1, "/v1/audio/transcriptions", ok, (audio_dir / CARDS[3]).read_bytes(),
             form={"response_format": "verbose_json", "language": "en"}),
        *[Kind(f"good-{fmt}", 1, "/asr", ok, data) for fmt, data in encoded.items()],
        *[Kind(f"edge-{path.name}", 1, "/asr", frozenset({400, 415}), path.read_bytes())
          for path in sorted((audio_dir / "edge").glob("*.wav"))],
        Kind("garbage-random", 3, "/asr", frozenset({400, 415}), np.random.default_rng(1).bytes(20_000)),
        Kind("garbage-text", 2, "/asr", frozenset({415}), b"not audio at all\n" * 100),
        Kind("truncated-flac", 2, "/asr", frozenset({400}), encoded["flac-44k-stereo"][:100]),
        Kind("truncated-webm", 2, "/asr", ok | {400}, encoded["webm"][: len(encoded["webm"]) // 2]),
        Kind("nan-samples", 2, "/asr", frozenset({400}), nan.getvalue()),
        Kind("tiny-file-one-hour", 2, "/asr", frozenset({413}), hour),
        Kind("empty", 2, "/asr", frozenset({400}), b""),
        Kind("wrong-field", 2, "/asr", frozenset({400}), (audio_dir / CARDS[1]).read_bytes(), field="audio"),
        Kind("bad-language", 2, "/asr", frozenset({422}), (audio_dir / CARDS[1]).read_bytes(),
             form={"lang": "klingon"}),
        Kind("bad-format", 2, "/v1/audio/transcriptions", frozenset({400}),
             (audio_dir / CARDS[1]).read_bytes(), form={"response_format": "xml"}),
        Kind("json-body", 1, "/asr", frozenset({400}), raw={"json": {"file": "x"}}),
        Kind("get-health", 2, "/health", ok, method="GET"),
        Kind("get-stats", 1, "/stats", ok, method="GET"),
        Kind("get-metrics", 1, "/metrics", ok, method="GET"),
    ]
    return mix


@dataclasses.dataclass
class Usage:
    rss_mb: float
    fds: int
    processes: int


def usage(pid: int) -> Usage:
    """RSS and open fds of the worker and every process below it."""
    worker = psutil.Process(pid)
    processes = [worker, *worker.children(recursive=True)]
    rss = fds = 0
    for process in processes:
        try:
            rss += process.memory_info().rss
            fds += process.num_fds()
        except psutil.NoSuchProcess:  # an ffmpeg that just ended
            pass
    return Usage(rss / 2**20, fds, len(processes))


def settled_usage(pid: int) -> Usage:
    """Usage once closed connections and ended ffmpegs are gone: the lowest of a few looks."""
    looks = []
    for _ in range(6):
        looks.append(usage(pid))
        time.sleep(0.25)
    return min(looks, key=lambda u: (u.fds, u.processes))


class Soak:
    def __init__(self, worker, mix: list[Kind], *, clients: int, seed: int = 0):
        self.worker = worker
        self.mix = mix
        self.clients = clients
        self.random = random.Random(seed)
        self.ledger: dict[str, tuple[str, int | str]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sent = 0

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(self._local.session)
        return self._local.session

    def _one(self, request_id: str, kind: Kind) -> None:
        url = self.worker.url + kind.endpoint
        headers = {"X-Request-ID": request_id}
        try:
            if kind.method == "GET":
                response = self._session().get(url, headers=headers, timeout=120)
            elif kind.raw is not None:
                response = self._session().post(url, headers=headers, timeout=120, **kind.raw)
            else:
                response = self._session().post(url, headers=headers, timeout=120, data=kind.form,
                                                files={kind.field: ("upload", kind.data)})
            outcome: int | str = response.status_code
            if response.headers.get("X-Request-ID") != request_id:
                outcome = f"echoed {response.headers.get('X-Request-ID')!r}"
        except requests.RequestException as error:
            outcome = f"{type(error).__name__}: {error}"
        with self._lock:
            assert request_id not in self.ledger, f"{request_id} answered twice"
            self.ledger[request_id] = (kind.name, outcome)

    def run(self, count: int) -> None:
        weights = [kind.weight for kind in self.mix]
        batch = []
        for _ in range(count):
            kind = self.random.choices(self.mix, weights)[0]
            batch.append((f"soak-{self._sent:06d}-{kind.name}", kind))
            self._sent += 1
        with concurrent.futures.ThreadPoolExecutor(self.clients) as pool:
            list(pool.map(lambda item: self._one(*item), batch))
        # Closed client connections: the worker's sockets go before sampling.
        for session in self._sessions:
            session.close()
        self._sessions.clear()
        self._local = threading.local()

    def check_ledger(self) -> collections.Counter:
        assert len(self.ledger) == self._sent, "a request has no outcome"
        kinds = {kind.name: kind for kind in self.mix}
        wrong = {rid: outcome for rid, (name, outcome) in self.ledger.items()
                 if outcome not in kinds[name].statuses}
        assert not wrong, f"{len(wrong)} unexpected outcomes, e.g. {list(wrong.items())[:5]}"
        # The worker logs every transcription request once, with its ID.
        log = self.worker.log_path.read_text(errors="replace")
        logged = collections.Counter(word[3:] for word in log.split() if word.startswith("id=soak-"))
        posted = {rid for rid, (name, _) in self.ledger.items() if kinds[name].method == "POST"}
        assert set(logged) == posted, "a request is missing from the worker log"
        assert max(logged.values()) == 1, "a request was handled twice"
        assert "Traceback" not in log
        return collections.Counter(outcome for _, outcome in self.ledger.values())


@pytest.fixture()
def soak_worker(start_worker, tmp_path, audio_dir):
    tmpdir = tmp_path / "worker-tmp"
    tmpdir.mkdir()
    worker = start_worker(ASR_ENGINE="pocketsphinx", ASR_INSTANCE_NAME="soak",
                          ASR_MAX_AUDIO_SECONDS="600", TMPDIR=str(tmpdir))
    (child,) = psutil.Process(worker.process.pid).children()
    mix = build_mix(audio_dir, tmp_path)
    yield worker, child.pid, mix
    assert list(tmpdir.iterdir()) == [], "the soak left files in the worker's temp folder"


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
