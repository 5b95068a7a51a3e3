"""Engines: the speech models a worker can serve, behind one interface.

This package is the only place that imports funasr, faster_whisper or
pocketsphinx, and it imports them inside `load_engine`, in the worker
process, never at import time: a Gunicorn master that imported a model
would hand broken CUDA state to its forked workers.
"""

from __future__ import annotations

import logging

from app.engines.base import SAMPLE_RATE, DecodeOptions, Engine, Transcript
from app.errors import ConfigError
from app.settings import Settings

__all__ = ["SAMPLE_RATE", "DecodeOptions", "Engine", "Transcript", "batch_items", "load_engine", "prefetch"]

log = logging.getLogger(__name__)


# Segments per model call when ASR_BATCH_MAX_ITEMS is not set.
BATCH_ITEMS = 8


def batch_items(engine: Engine) -> int:
    """BATCH_ITEMS, or 1 for an engine that says batching loses on its
    device (`batches_on_cpu = False`, on the CPU)."""
    if engine.device == "cpu" and not getattr(engine, "batches_on_cpu", True):
        return 1
    return BATCH_ITEMS


def load_engine(settings: Settings) -> Engine:
    """Loads the engine the settings ask for.

    auto: the FunASR model when it can be had, else the embedded Whisper
    model (ASR_FALLBACK_MODEL) with a loud warning. An engine named
    explicitly that cannot load is a ConfigError with a one-line reason: no
    silent fallback.
    """
    if settings.engine == "pocketsphinx":
        from app.engines.pocketsphinx_engine import PocketSphinxEngine

        return PocketSphinxEngine.load()
    if settings.engine == "whisper":
        return _load_whisper(settings, settings.model)
    if settings.engine == "funasr":
        return _load_funasr(settings)
    available, reason = _funasr_model_is_available(settings)
    if available:
        return _load_funasr(settings)
    log.warning(
        "!!! ASR_ENGINE=auto: FunASR model %s is not available (%s); serving the EMBEDDED Whisper "
        "model %s instead. Every response names the model served. !!!",
        settings.model, reason, settings.fallback_model,
    )
    return _load_whisper(settings, settings.fallback_model)


def _funasr_model_is_available(settings: Settings) -> tuple[bool, str]:
    """Asks in a child process: the check imports funasr and modelscope
    (about 270 MB and 5 s), which a worker that ends up serving Whisper
    should not carry for the rest of its life."""
    import concurrent.futures
    import multiprocessing

    from app.engines import funasr_engine

    context = multiprocessing.get_context("spawn")  # the worker has threads: never fork it
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(funasr_engine.model_is_available, settings.model, settings.model_cache_dir).result()


def prefetch(settings: Settings) -> str:
    """Makes the model the workers will load local, once, before they start:
    downloads a hub model, or assembles an embedded Whisper model. Returns
    what the workers will serve, in one line. Raises ConfigError when an
    explicitly named model cannot be had."""
    if settings.engine == "pocketsphinx":
        return "the embedded pocketsphinx engine"
    if settings.engine != "whisper":
        from app.engines import funasr_engine

        available, reason = funasr_engine.model_is_available(settings.model, settings.model_cache_dir)
        if available:
            return f"FunASR model {settings.model} at {funasr_engine.prefetch(settings.model, settings.model_cache_dir)}"
        if settings.engine == "funasr":
            raise ConfigError(f"ASR_ENGINE=funasr but {reason}")
        log.warning("FunASR model %s is not available (%s)", settings.model, reason)
    from app.engines import whisper_models

    model = settings.model if settings.engine == "whisper" else settings.fallback_model
    return f"Whisper model {model} at {whisper_models.resolve(model, settings.whisper_cache_dir)}"


def _check_gpu(settings: Settings, device: str) -> str:
    """A worker pinned to a GPU (CUDA_VISIBLE_DEVICES names one) that the
    engine cannot use is a ConfigError, not a silent CPU run: the fleet
    placed it there, and on the CPU it would be many times slower while
    /fleet still showed the GPU."""
    if settings.uses_gpu and device == "cpu":
        raise ConfigError(f"CUDA_VISIBLE_DEVICES={settings.cuda_visible_devices!r} names a GPU but the "
                          "engine can use none (no such GPU, no driver, or a CPU-only build)")
    return device


def _load_whisper(settings: Settings, model: str) -> Engine:
    from app.engines import whisper_models
    from app.engines.whisper_engine import WhisperEngine, pick_device

    device = _check_gpu(settings, pick_device(settings.cuda_visible_devices))
    path = whisper_models.resolve(model, settings.whisper_cache_dir)
    try:
        return WhisperEngine.load(path, whisper_models.display_name(model), device, settings.compute_type,
                                  settings.cpu_threads)
    except Exception as error:  # CTranslate2 raises RuntimeError or ValueError for a bad file
        raise ConfigError(f"cannot load Whisper model {model!r} from {path} on {device}: "
                          f"{_one_line(error)}") from error


def _load_funasr(settings: Settings) -> Engine:
    from app.engines.funasr_engine import FunASREngine, pick_device

    device = _check_gpu(settings, pick_device(settings.cuda_visible_devices))
    try:
        return FunASREngine.load(settings.model, device, settings.model_cache_dir, settings.cpu_threads)
    except Exception as error:  # funasr raises anything from KeyError to OSError
        raise ConfigError(f"cannot load FunASR model {settings.model!r} on {device}: "
                          f"{_one_line(error)}") from error


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
