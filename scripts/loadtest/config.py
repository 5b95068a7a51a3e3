"""The load test's inputs: the recordings, the target check and one run's LoadConfig.

Nothing here sends a request; `loadtest.core.run_load` takes a LoadConfig.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_AUDIO = REPO.parent / "shared" / "audio"
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm",
                              ".wma", ".aif", ".aiff", ".mp4"})
ENDPOINTS = ("/asr", "/asr_simple", "/v1/audio/transcriptions")
OPENAI_ENDPOINT = "/v1/audio/transcriptions"
MAX_FILES = 500
MAX_FILE_BYTES = 100 * 1024 * 1024
MAX_CONCURRENCY = 512
NO_HEADER = "(no X-ASR-Worker)"


@dataclasses.dataclass(frozen=True)
class AudioFile:
    """One recording, read once; `seconds` is None when soundfile cannot tell."""

    name: str
    data: bytes
    seconds: float | None


def audio_paths(target: str | Path) -> list[Path]:
    """The recordings a --files argument names: the file, or the folder's audio files (not subfolders)."""
    path = Path(target)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"--files: no such file or folder: {path}")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not found:
        raise ValueError(f"--files: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in {path}")
    if len(found) > MAX_FILES:
        raise ValueError(f"--files: {len(found)} files in {path}, the most is {MAX_FILES}")
    return found


def load_audio(paths) -> list[AudioFile]:
    import soundfile  # only here: the core stays importable where libsndfile is missing

    files = []
    for path in paths:
        path = Path(path)
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{path}: {size} bytes, the most is {MAX_FILE_BYTES}")
        try:
            seconds = float(soundfile.info(str(path)).duration)
        except (RuntimeError, OSError):  # a format libsndfile lacks: the server's `duration` fills it in
            seconds = None
        files.append(AudioFile(path.name, path.read_bytes(), seconds))
    return files


def check_target(url: str, allow_remote: bool = False) -> str:
    """The URL without a trailing slash; ValueError unless http(s) to loopback (or allowed)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be http(s)://host[:port], not {url!r}")
    host = parts.hostname
    if not allow_remote:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host.lower() == "localhost"
        if not loopback:
            raise ValueError(f"refusing non-loopback target {host!r}: a load test sends real load; "
                             "pass --allow-remote if you mean it")
    return url.rstrip("/")


@dataclasses.dataclass
class LoadConfig:
    """One run. `files` are paths or AudioFile objects; exactly the bounds given are kept."""

    url: str = "http://127.0.0.1:5002"
    endpoint: str = "/asr"
    files: list = dataclasses.field(default_factory=lambda: [DEFAULT_AUDIO])
    concurrency: int = 4
    requests: int | None = None  # per user; None with no duration means 10
    duration: float | None = None  # seconds; with requests too, whichever ends first
    delay: float = 0.0  # seconds each user waits between its requests
    timeout: float = 120.0
    lang: str | None = None
    model: str = "whisper-1"  # the OpenAI endpoint's `model` field; a worker serves one model
    warmup: int = 0
    max_requests: int = 10_000
    max_duration: float = 3600.0
    allow_remote: bool = False
    progress: bool = False
    sample_interval: float = 0.5

    def validate(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"--endpoint must be one of {', '.join(ENDPOINTS)}, not {self.endpoint!r}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"--concurrency must be 1-{MAX_CONCURRENCY}, not {self.concurrency}")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"--requests must be at least 1, not {self.requests}")
        if self.duration is not None and not 0 < self.duration <= self.max_duration:
            raise ValueError(f"--duration must be in (0, {self.max_duration}], not {self.duration}")
        if self.max_requests < 1 or self.max_duration <= 0 or self.timeout <= 0 or self.delay < 0:
            raise ValueError("--max-requests, --max-duration and --timeout must be positive, "
                             "--delay not negative")
        if self.warmup < 0:
            raise ValueError("--warmup must not be negative")
        check_target(self.url, self.allow_remote)

    @property
    def per_user(self) -> int | None:
        """Requests each user sends; None means until the duration ends."""
        if self.requests is None and self.duration is None:
            return 10
        return self.requests

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["files"] = [f.name if isinstance(f, AudioFile) else str(f) for f in self.files]
        out["requests_per_user"] = self.per_user
        return out

