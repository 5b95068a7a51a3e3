"""The worker's settings: one frozen object built from ASR_* variables.

This is the only module that reads the environment. Everything else takes a
Settings, so a test builds exactly the worker it wants with `Settings(...)`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from app.errors import ConfigError

ENGINES = ("auto", "funasr", "pocketsphinx")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of one worker, with the default a single CPU worker wants."""

    host: str = "127.0.0.1"
    port: int = 8001
    instance_name: str = ""
    engine: str = "auto"
    model: str = "iic/SenseVoiceSmall"
    # Where FunASR keeps downloaded models; None means ModelScope's default.
    model_cache_dir: str | None = None
    # As set by Supervisor for this worker; None or "" means no GPU.
    cuda_visible_devices: str | None = None

    max_upload_bytes: int = 100 * 1024 * 1024
    max_audio_seconds: float = 2 * 3600.0
    # /asr_simple runs one pass over the whole file, so it must stay short.
    max_simple_seconds: float = 60.0
    max_segment_seconds: float = 30.0
    min_segment_seconds: float = 0.1
    ffmpeg_timeout_seconds: float = 60.0

    batch_max_items: int = 8
    batch_max_seconds: float = 240.0
    batch_wait_ms: float = 10.0
    # Segments waiting for the model; above this the worker answers 503.
    queue_max_items: int = 256
    # A request not done by then gets 503 instead of holding a thread.
    request_timeout_seconds: float = 300.0
    segment_retries: int = 3
    retry_backoff_seconds: float = 0.05

    # A file of accepted API keys, one per line; None means no key needed.
    api_key_file: str | None = None

    log_level: str = "info"

    def __post_init__(self) -> None:
        if not self.instance_name:
            object.__setattr__(self, "instance_name", f"asr-{self.port}")
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError with a one-line reason for impossible values."""
        if self.engine not in ENGINES:
            raise ConfigError(f"ASR_ENGINE must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"ASR_PORT must be 1-65535, not {self.port}")
        positive = {
            "ASR_MAX_UPLOAD_MB": self.max_upload_bytes,
            "ASR_MAX_AUDIO_SECONDS": self.max_audio_seconds,
            "ASR_MAX_SEGMENT_SECONDS": self.max_segment_seconds,
            "ASR_BATCH_MAX_ITEMS": self.batch_max_items,
            "ASR_BATCH_MAX_SECONDS": self.batch_max_seconds,
            "ASR_QUEUE_MAX_ITEMS": self.queue_max_items,
            "ASR_REQUEST_TIMEOUT": self.request_timeout_seconds,
            "ASR_FFMPEG_TIMEOUT": self.ffmpeg_timeout_seconds,
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
        take("ASR_MAX_AUDIO_SECONDS", "max_audio_seconds", float)
        take("ASR_MAX_SIMPLE_SECONDS", "max_simple_seconds", float)
        take("ASR_MAX_SEGMENT_SECONDS", "max_segment_seconds", float)
        take("ASR_FFMPEG_TIMEOUT", "ffmpeg_timeout_seconds", float)
        take("ASR_BATCH_MAX_ITEMS", "batch_max_items", int)
        take("ASR_BATCH_MAX_SECONDS", "batch_max_seconds", float)
        take("ASR_BATCH_WAIT_MS", "batch_wait_ms", float)
        take("ASR_QUEUE_MAX_ITEMS", "queue_max_items", int)
        take("ASR_REQUEST_TIMEOUT", "request_timeout_seconds", float)
        take("ASR_SEGMENT_RETRIES", "segment_retries", int)
        take("ASR_LOG_LEVEL", "log_level")
        take("ASR_API_KEY_FILE", "api_key_file")
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
