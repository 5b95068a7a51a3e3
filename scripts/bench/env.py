"""What the benchmarks run on: the machine, the audio sets, the models, and CPU accounting.

The machine may be shared, so CPU time is counted for our own process trees
(this process and the ROOTS that bench.lab starts) and the rest of the
machine's busy time is reported as other tenants' load.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile

from loadtest.config import DEFAULT_AUDIO, REPO, AudioFile

from . import gpu

PYTHON = REPO / ".venv" / "bin" / "python"
GUNICORN = REPO / ".venv" / "bin" / "gunicorn"
FLEET = REPO / "scripts" / "fleet.py"
MODELS = REPO / "models"  # git-ignored: the built models are cached here
FULL_MODEL = MODELS / "sensevoice-full"
TINY_MODEL = MODELS / "tiny-sensevoice"  # the same path `make tiny-model` writes
# --engine choices: what the fleets and the in-process pipeline serve.
ENGINES = {"whisper-base": {"engine": "whisper", "model": "base"},
           "whisper-tiny.en": {"engine": "whisper", "model": "tiny.en"},
           "pocketsphinx": {"engine": "pocketsphinx"},
           "funasr-tiny": {"engine": "funasr", "model": str(TINY_MODEL)},
           "funasr-full": {"engine": "funasr", "model": str(FULL_MODEL)}}
if str(REPO) not in sys.path:  # `app`, for the in-process runs
    sys.path.insert(0, str(REPO))
# The mixed set, in the order `loadtest.py --files ../shared/audio` sends it:
# card names (1-3.5 s), the 44.1 kHz stereo JFK FLAC (11 s), LibriVox sentences (3-7 s).
MIXED = ["cards001.wav", "cards002.wav", "cards003.wav", "cards004.wav", "cards005.wav", "jfk.flac",
         "sense_and_sensibility_01_austen_64kb-0870.wav", "sense_and_sensibility_01_austen_64kb-0880.wav",
         "sense_and_sensibility_01_austen_64kb-0890.wav"]
SHORT = MIXED[:5] + MIXED[6:]  # 16 kHz mono, 1 to 7 s: one or two VAD segments each
CARDS = MIXED[:5]


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu or "unknown",
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "gpus": gpu.record(),  # [] without nvidia-smi or a driver
            "python": platform.python_version(), "os": platform.platform(terse=True),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


ROOTS: set[int] = set()  # the supervisord and Gunicorn masters the benchmarks started
COPIES: set[int] = set()  # bench/ceiling.py's pipeline processes (spawned, like a decoder child)


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (all processes, all cores)."""
    times = psutil.cpu_times()
    return sum(getattr(times, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq"))


def _kind(proc: psutil.Process, bench: int) -> str:
    """Which part of the stack a process is, for the CPU breakdown."""
    if proc.pid == bench:
        return "bench process (load generator, or the in-process pipeline)"
    if proc.pid in COPIES:
        return "pipeline copy (bench/ceiling.py)"
    line = " ".join(proc.cmdline())
    for needle, kind in (("spawn_main", "decoder child process (pocketsphinx)"),
                         ("supervisord", "supervisord"), ("nginx", "nginx"),
                         ("gunicorn", "gunicorn worker (Flask app)"),
                         ("health_poller", "health poller"), ("fleet.py", "health poller")):
        if needle in line:
            return kind
    return "other"


def own_cpu_by_kind() -> dict[str, float]:
    """CPU seconds of this process, the fleets and workers it started, and all their children
    (reaped ones through their parent's children_* times), by kind; other tenants excluded."""
    totals: dict[str, float] = {}
    bench = os.getpid()
    seen: set[int] = set()
    for root in {bench, *ROOTS}:
        try:
            procs = [psutil.Process(root)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            continue
        for proc in procs:
            # Each process once: a direct worker or a peer server is a ROOT and this process's child too.
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                t, kind = proc.cpu_times(), _kind(proc, bench)
            except psutil.Error:
                continue
            totals[kind] = totals.get(kind, 0.0) + t.user + t.system + t.children_user + t.children_system
    return totals


class CpuMeter:
    """Our CPU seconds since it was made (in all, and by kind), and the rest of the machine's."""

    def __init__(self):
        self.kinds, self.busy = own_cpu_by_kind(), busy_cpu_seconds()

    def by_kind(self) -> dict[str, float]:
        now = own_cpu_by_kind()
        spent = {k: v - self.kinds.get(k, 0.0) for k, v in now.items()}
        return {k: round(v, 3) for k, v in spent.items() if v > 0}

    def read(self) -> tuple[float, float]:
        own = sum(self.by_kind().values())
        return own, max(0.0, busy_cpu_seconds() - self.busy - own)


def wait_quiet(max_wait: float = 10.0, threshold: float = 0.3) -> float:
    """Waits (at most max_wait s) until other tenants use under `threshold` cores over a second;
    returns the last such reading. A shared machine's neighbours come and go; a round that starts
    while one is busy measures the neighbour."""
    deadline = time.monotonic() + max_wait
    while True:
        meter = CpuMeter()
        time.sleep(1.0)
        foreign = meter.read()[1]
        if foreign < threshold or time.monotonic() >= deadline:
            return round(foreign, 2)


def audio_set(names: list[str]) -> list[AudioFile]:
    return [AudioFile(n, (DEFAULT_AUDIO / n).read_bytes(), soundfile.info(str(DEFAULT_AUDIO / n)).duration)
            for n in names]


def long_recording(work: Path) -> AudioFile:
    """The LibriVox sentences and the JFK clip end to end (~27 s, 16 kHz mono): a long request."""
    from app import audio

    gap = np.zeros(audio.SAMPLE_RATE // 2, np.float32)
    parts = []
    for name in MIXED[5:]:  # JFK and the LibriVox sentences
        parts += [audio.decode((DEFAULT_AUDIO / name).read_bytes(), max_seconds=60, ffmpeg_timeout=30), gap]
    path = work / "long-27s.wav"
    soundfile.write(str(path), np.concatenate(parts), audio.SAMPLE_RATE, subtype="PCM_16")
    return AudioFile(path.name, path.read_bytes(), soundfile.info(str(path)).duration)


def ensure_model(path: Path, full_size: bool) -> Path:
    """Builds the random-weight SenseVoice model once; later runs reuse it."""
    if not ((path / "config.yaml").is_file() and (path / "model.pt").is_file()):
        print(f"bench: building {path} (make_tiny_model.py{' --full-size' if full_size else ''})",
              file=sys.stderr, flush=True)
        subprocess.run([str(PYTHON), str(REPO / "scripts" / "make_tiny_model.py"), str(path)]
                       + (["--full-size"] if full_size else []), check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    return path


def engine_settings(name: str) -> dict:
    """Settings fields for an --engine choice, building its model first if it is one of ours."""
    if name.startswith("funasr"):
        ensure_model(Path(ENGINES[name]["model"]), full_size=name == "funasr-full")
    return dict(ENGINES[name])
