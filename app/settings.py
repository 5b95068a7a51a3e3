"""The worker's settings: one frozen object built from ASR_* variables.

This is the only module that reads the environment. Everything else takes a
Settings, so a test builds exactly the worker it wants with `Settings(...)`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from app.errors import ConfigError

ENGINES = ("auto", "funasr", "whisper", "pocketsphinx")
# What each engine serves when ASR_MODEL is unset. auto tries the FunASR
# model first and falls back to the embedded Whisper (ASR_FALLBACK_MODEL).
DEFAULT_MODELS = {"auto": "iic/SenseVoiceSmall", "funasr": "iic/SenseVoiceSmall", "whisper": "base",
                  "pocketsphinx": "pocketsphinx/en-us"}
COMPUTE_TYPES = ("auto", "default", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                 "float16", "bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of one worker, with the default a single CPU worker wants."""

    host: str = "127.0.0.1"
    port: int = 8001
    instance_name: str = ""
    engine: str = "auto"
    # A hub id, a size name or a local directory; "" means the engine's default.
    model: str = ""
    # What auto serves when the FunASR model cannot be had: a Whisper model
    # that ships inside a pip package ("base" or "tiny.en"), so it always loads.
    fallback_model: str = "base"
    # Where FunASR keeps downloaded models; None means ModelScope's default.
    model_cache_dir: str | None = None
    # Where Whisper models live: the embedded ones assembled from their
    # packages, and sizes fetched from the hub. None: ~/.cache/asr-fleet.
    whisper_cache_dir: str | None = None
    # CTranslate2 precision; "auto" is float16 on a GPU and int8 on the CPU.
    compute_type: str = "auto"
    # Threads the model may use on the CPU. The fleet sets it so that its
    # instances together do not ask for more threads than there are cores;
    # 0 leaves it to the library (every core).
    cpu_threads: int = 0
    # As set by Supervisor for this worker; None or "" means no GPU.
    cuda_visible_devices: str | None = None

    max_upload_bytes: int = 100 * 1024 * 1024
    max_audio_seconds: float = 2 * 3600.0
    # /asr_simple runs one pass over the whole file, so it must stay short.
    max_simple_seconds: float = 60.0
    max_segment_seconds: float = 30.0
    min_segment_seconds: float = 0.1
    ffmpeg_timeout_seconds: float = 60.0

    # Segments per model call; None (unset, or "auto"): the engine's choice
    # for its device (app.engines.batch_items).
    batch_max_items: int | None = None
    batch_max_seconds: float = 240.0
    batch_wait_ms: float = 10.0
    # Segments waiting for the model; above this the worker answers 503.
    queue_max_items: int = 256
    # Transcription requests handled at once; above it 503 + Retry-After at
    # once, before the body is read. Gunicorn gets this many handler threads
    # plus a reserve, so /health never waits behind transcriptions. The fleet
    # sets it per instance (and Nginx's max_conns to match).
    max_concurrent_requests: int = 16
    # A request not done by then gets 503 instead of holding a thread.
    request_timeout_seconds: float = 300.0
    segment_retries: int = 3
    retry_backoff_seconds: float = 0.05

    # A file of accepted API keys, one per line; None means no key needed.
    api_key_file: str | None = None

    # Long recordings (app/jobs/). The SQLite file every worker of the host
    # shares: the segment queue of long requests and the jobs. The fleet
    # puts it in its run folder; None: no jobs, every request in-process.
    job_db: str | None = None
    # Synchronous requests with at least this much audio are spread over
    # every worker through that queue; shorter ones stay in-process.
    fanout_min_seconds: float = 120.0
    # The longest a client is kept waiting on one request: a recording the
    # fleet's measured speed says cannot finish within it is refused at once
    # (413, pointing to /v1/jobs). Nginx's read timeout is set above it.
    max_sync_seconds: float = 1800.0
    # Speed assumed (engine seconds per audio second) until a worker has
    # measured its own; on the slow side, so a fresh fleet refuses too much
    # rather than starting what it cannot finish.
    assumed_rtf: float = 0.3
    # Longest audio a job may hold (a job is decoded whole: ~4 bytes a sample).
    max_job_audio_seconds: float = 4 * 3600.0
    # Finished jobs (their audio and results) are deleted after this.
    job_retention_seconds: float = 24 * 3600.0
    # Queue segments a worker holds at once. A short request arriving
    # meanwhile waits for at most these in its batcher, so keep it small on
    # a CPU (a 30 s window is seconds of work); on a GPU set it to
    # ASR_BATCH_MAX_ITEMS so pulled windows fill whole batches.
    pull_max_items: int = 2
    # A worker whose heartbeat is older than this is dead: its segments go
    # back to the queue. Heartbeats come every second.
    worker_stale_seconds: float = 5.0

    # A stream=true answer sends a comment line this often while a window is
    # still being recognised: proxies' read timeouts never fire on a long
    # stream, and a client that has gone is noticed (its queued work dropped).
    stream_keepalive_seconds: float = 1.0

    log_level: str = "info"

    def __post_init__(self) -> None:
        if not self.instance_name:
            object.__setattr__(self, "instance_name", f"asr-{self.port}")
        if not self.model and self.engine in DEFAULT_MODELS:
            object.__setattr__(self, "model", DEFAULT_MODELS[self.engine])
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError with a one-line reason for impossible values."""
        if self.engine not in ENGINES:
            raise ConfigError(f"ASR_ENGINE must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.compute_type not in COMPUTE_TYPES:
            raise ConfigError(f"ASR_COMPUTE_TYPE must be one of {', '.join(COMPUTE_TYPES)}, "
                              f"not {self.compute_type!r}")
        if self.cpu_threads < 0:
            raise ConfigError(f"ASR_CPU_THREADS must not be negative, not {self.cpu_threads}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"ASR_PORT must be 1-65535, not {self.port}")
        positive = {
            "ASR_MAX_UPLOAD_MB": self.max_upload_bytes,
            "ASR_MAX_AUDIO_SECONDS": self.max_audio_seconds,
            "ASR_MAX_SEGMENT_SECONDS": self.max_segment_seconds,
            "ASR_BATCH_MAX_ITEMS": 1 if self.batch_max_items is None else self.batch_max_items,
            "ASR_BATCH_MAX_SECONDS": self.batch_max_seconds,
            "ASR_QUEUE_MAX_ITEMS": self.queue_max_items,
            "ASR_MAX_CONCURRENT": self.max_concurrent_requests,
            "ASR_REQUEST_TIMEOUT": self.request_timeout_seconds,
            "ASR_FFMPEG_TIMEOUT": self.ffmpeg_timeout_seconds,
            "ASR_MAX_SYNC_SECONDS": self.max_sync_seconds,
            "ASR_ASSUMED_RTF": self.assumed_rtf,
            "ASR_MAX_JOB_AUDIO_SECONDS": self.max_job_audio_seconds,
            "ASR_JOB_RETENTION_SECONDS": self.job_retention_seconds,
            "ASR_WORKER_STALE_SECONDS": self.worker_stale_seconds,
            "ASR_PULL_MAX_ITEMS": self.pull_max_items,
            "ASR_STREAM_KEEPALIVE_S": self.stream_keepalive_seconds,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, not {value}")
        if self.batch_wait_ms < 0 or self.segment_retries < 0:
            raise ConfigError("ASR_BATCH_WAIT_MS and ASR_SEGMENT_RETRIES must not be negative")
        if self.max_segment_seconds > self.batch_max_seconds:
            raise ConfigError("ASR_MAX_SEGMENT_SECONDS must not exceed ASR_BATCH_MAX_SECONDS")

    @property
    def uses_gpu(self) -> bool:
        value = (self.cuda_visible_devices or "").strip().lower()
        return value not in ("", "-1", "none", "nodevfiles")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Builds Settings from ASR_* variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        fields: dict[str, object] = {}

        def take(var: str, field: str, convert=str) -> None:
            raw = env.get(var)
            if raw is None or raw == "":
                return
            try:
                fields[field] = convert(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a valid {convert.__name__}") from None

        take("ASR_HOST", "host")
        take("ASR_PORT", "port", int)
        take("ASR_INSTANCE_NAME", "instance_name")
        take("ASR_ENGINE", "engine", lambda v: v.strip().lower())
        take("ASR_MODEL", "model")
        take("ASR_MODEL_CACHE", "model_cache_dir")
        take("ASR_FALLBACK_MODEL", "fallback_model")
        take("ASR_WHISPER_CACHE", "whisper_cache_dir")
        take("ASR_COMPUTE_TYPE", "compute_type", lambda v: v.strip().lower())
        take("ASR_CPU_THREADS", "cpu_threads", int)
        take("ASR_MAX_AUDIO_SECONDS", "max_audio_seconds", float)
        take("ASR_MAX_SIMPLE_SECONDS", "max_simple_seconds", float)
        take("ASR_MAX_SEGMENT_SECONDS", "max_segment_seconds", float)
        take("ASR_FFMPEG_TIMEOUT", "ffmpeg_timeout_seconds", float)
        if (env.get("ASR_BATCH_MAX_ITEMS") or "").strip().lower() != "auto":
            take("ASR_BATCH_MAX_ITEMS", "batch_max_items", int)
        take("ASR_BATCH_MAX_SECONDS", "batch_max_seconds", float)
        take("ASR_BATCH_WAIT_MS", "batch_wait_ms", float)
        take("ASR_QUEUE_MAX_ITEMS", "queue_max_items", int)
        take("ASR_MAX_CONCURRENT", "max_concurrent_requests", int)
        take("ASR_REQUEST_TIMEOUT", "request_timeout_seconds", float)
        take("ASR_SEGMENT_RETRIES", "segment_retries", int)
        take("ASR_LOG_LEVEL", "log_level")
        take("ASR_API_KEY_FILE", "api_key_file")
        take("ASR_JOB_DB", "job_db")
        take("ASR_FANOUT_MIN_SECONDS", "fanout_min_seconds", float)
        take("ASR_MAX_SYNC_SECONDS", "max_sync_seconds", float)
        take("ASR_ASSUMED_RTF", "assumed_rtf", float)
        take("ASR_MAX_JOB_AUDIO_SECONDS", "max_job_audio_seconds", float)
        take("ASR_JOB_RETENTION_SECONDS", "job_retention_seconds", float)
        take("ASR_WORKER_STALE_SECONDS", "worker_stale_seconds", float)
        take("ASR_PULL_MAX_ITEMS", "pull_max_items", int)
        take("ASR_STREAM_KEEPALIVE_S", "stream_keepalive_seconds", float)
        mb = env.get("ASR_MAX_UPLOAD_MB")
        if mb:
            try:
                fields["max_upload_bytes"] = int(float(mb) * 1024 * 1024)
            except ValueError:
                raise ConfigError(f"ASR_MAX_UPLOAD_MB={mb!r} is not a number") from None
        if "CUDA_VISIBLE_DEVICES" in env:
            fields["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]
        if "ASR_MODEL_CACHE" not in fields and env.get("MODELSCOPE_CACHE"):
            fields["model_cache_dir"] = env["MODELSCOPE_CACHE"]
        return cls(**fields)  # type: ignore[arg-type]
