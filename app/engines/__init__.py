"""Engines: the speech models a worker can serve, behind one interface.

This package is the only place that imports funasr or pocketsphinx, and it
imports them inside `load_engine`, in the worker process, never at import
time: a Gunicorn master that imported torch models would hand broken CUDA
state to its forked workers.
"""

from __future__ import annotations

import logging

from app.engines.base import SAMPLE_RATE, Engine, Transcript
from app.errors import ConfigError
from app.settings import Settings

__all__ = ["SAMPLE_RATE", "Engine", "Transcript", "load_engine"]

log = logging.getLogger(__name__)


def load_engine(settings: Settings) -> Engine:
    """Loads the engine the settings ask for.

    auto: the FunASR model when it can be had, else the embedded engine with a
    loud warning. An engine named explicitly that cannot load is a
    ConfigError with a one-line reason: no silent fallback.
    """
    if settings.engine == "pocketsphinx":
        return _load_pocketsphinx()
    from app.engines import funasr_engine

    if settings.engine == "funasr":
        return _load_funasr(settings.model, _device(settings), settings.model_cache_dir)
    available, reason = funasr_engine.model_is_available(settings.model, settings.model_cache_dir)
    if available:
        return _load_funasr(settings.model, _device(settings), settings.model_cache_dir)
    log.warning(
        "!!! ASR_ENGINE=auto: FunASR model %s is not available (%s); "
        "serving the EMBEDDED pocketsphinx engine instead. Every response "
        "names the model served. !!!",
        settings.model, reason,
    )
    return _load_pocketsphinx()


def _device(settings: Settings) -> str:
    """The torch device for FunASR. A worker pinned to a GPU (CUDA_VISIBLE_DEVICES
    names one) that torch cannot use is a ConfigError, not a silent CPU run:
    the fleet placed it there, and on the CPU it would be many times slower
    while /fleet still showed the GPU."""
    from app.engines import funasr_engine

    device = funasr_engine.pick_device(settings.cuda_visible_devices)
    if settings.uses_gpu and device == "cpu":
        raise ConfigError(f"CUDA_VISIBLE_DEVICES={settings.cuda_visible_devices!r} names a GPU but torch "
                          "can use none (no such GPU, no driver, or a CPU-only torch build)")
    return device


def _load_pocketsphinx() -> Engine:
    from app.engines.pocketsphinx_engine import PocketSphinxEngine

    return PocketSphinxEngine.load()


def _load_funasr(model: str, device: str, cache_dir: str | None) -> Engine:
    from app.engines.funasr_engine import FunASREngine

    try:
        return FunASREngine.load(model, device, cache_dir)
    except Exception as error:  # funasr raises anything from KeyError to OSError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot load FunASR model {model!r} on {device}: {reason}") from error
