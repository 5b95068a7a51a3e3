"""The soak's machinery: the mix of requests it sends to one real worker,
the ledger that must close (each request answered exactly once, with a status
its kind allows, and logged exactly once by the worker), and the worker's
resources (RSS and open fds, its own and its children's) sampled between
rounds. The bounds and why they are what they are: tests/test_soak.py.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import random
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests
from speech import CARDS, audio_bytes, encode, ffmpeg

LIBRIVOX_SHORT = "sense_and_sensibility_01_austen_64kb-0880.wav"  # 3 s
# The encodings the soak sends of a card recording, by the name its kind
# takes, and their speech.ENCODINGS entries.
ENCODED = {"mp3": "mp3", "ogg": "ogg-vorbis", "webm": "webm", "m4a": "m4a-moov-first",
           "flac-44k-stereo": "flac-44k-stereo"}


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


def build_mix(audio_dir: Path, scratch: Path) -> list[Kind]:
    card = audio_dir / "cards002.wav"
    encoded = {name: encode(card, encoding, scratch) for name, encoding in ENCODED.items()}
    nan = audio_bytes(np.full(8000, np.nan, np.float32), subtype="FLOAT")
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
        Kind("nan-samples", 2, "/asr", frozenset({400}), nan),
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

