"""GPUs for the benchmarks: what the machine has, where the lab puts instances,
and what the GPUs did while the load ran.

nvidia-smi is asked through the fleet's own functions (scripts/fleet/config.py):
gpu_count() for placement, so the bench puts instances on exactly the GPUs a
fleet accepts, and query_gpus() for the record and the samples. Without
nvidia-smi or a driver every answer here is empty and the benchmarks run on
the CPU as before.
"""

from __future__ import annotations

import contextlib
import shutil
import threading

from fleet.placement import gpu_count, query_gpus

INTERVAL_S = 0.5  # one reading every half second: a short round still gets several
_watching: list[list[dict]] = []  # the samples of the benchmark now running (cli.main's watch())


def count() -> int:
    """GPUs the fleet would place instances on (`nvidia-smi -L`)."""
    return gpu_count()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]" on some boards
        return None


def record() -> list[dict]:
    """Each GPU's index, name, driver version and total memory, for the document; [] when none."""
    return [{"index": int(row["index"]), "name": row["name"], "driver": row["driver_version"],
             "memory_total_mb": _number(row["memory.total"])}
            for row in query_gpus("index", "name", "driver_version", "memory.total")
            if row["index"].isdigit()]


def worker_env(index: int) -> dict[str, str]:
    """A worker pinned to GPU `index` as the fleet pins its instances
    (scripts/fleet/render.py): CUDA_VISIBLE_DEVICES with nvidia-smi's PCI-bus
    numbering, which is the numbering `index` comes from."""
    return {"CUDA_VISIBLE_DEVICES": str(index), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def in_process() -> dict[str, str]:
    """Settings fields that put an engine loaded in this process on the first GPU, when there is one."""
    return {"cuda_visible_devices": "0"} if count() else {}


class Sampler(threading.Thread):
    """Every GPU's utilisation and memory in use, read every `interval` seconds until stop()."""

    def __init__(self, interval: float | None = None):
        super().__init__(name="bench-gpu-sampler", daemon=True)
        self.interval = INTERVAL_S if interval is None else interval
        self.samples: list[dict] = []
        self._stop_event = threading.Event()

    def sample(self) -> None:
        for row in query_gpus("index", "utilization.gpu", "memory.used"):
            util, used = _number(row["utilization.gpu"]), _number(row["memory.used"])
            if util is not None and used is not None:
                self.samples.append({"index": row["index"], "util": util, "memory_used_mb": used})

    def run(self) -> None:
        self.sample()
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> list[dict]:
        self._stop_event.set()
        self.join()
        self.sample()  # one at the end: even a load shorter than the interval has a reading
        return self.samples


def summarise(samples: list[dict]) -> dict[str, dict]:
    """Per GPU index: mean and max utilisation (%), max memory in use (MiB), readings."""
    out: dict[str, dict] = {}
    for index in sorted({s["index"] for s in samples}, key=int):
        mine = [s for s in samples if s["index"] == index]
        utils = [s["util"] for s in mine]
        out[index] = {"util_mean": round(sum(utils) / len(utils), 1), "util_max": max(utils),
                      "memory_max_mb": max(s["memory_used_mb"] for s in mine), "samples": len(mine)}
    return out


@contextlib.contextmanager
def during_load():
    """Samples the GPUs while the block (a load run) goes on, into the benchmark being watched.
    Nothing at all without nvidia-smi or outside watch()."""
    if not _watching or not shutil.which("nvidia-smi"):
        yield
        return
    sampler = Sampler()
    sampler.start()
    try:
        yield
    finally:
        _watching[-1].extend(sampler.stop())


@contextlib.contextmanager
def watch():
    """Collects what during_load() samples while one benchmark runs; yields the list."""
    samples: list[dict] = []
    _watching.append(samples)
    try:
        yield samples
    finally:
        _watching.remove(samples)



# docs/benchmarks.md's words for the GPUs (bench.doc): no GPU figure where none was measured.

def _mib(value: float | None) -> str:
    return "? MiB" if value is None else f"{value:,.0f} MiB"


def describe(machine: dict) -> str:
    """The machine's GPUs for the document; "no GPU" without one (or in figures older than the record)."""
    gpus = machine.get("gpus") or []
    if not gpus:
        return "no GPU"
    return ", ".join(f"GPU {g['index']}: {g['name']} (driver {g['driver']}, {_mib(g['memory_total_mb'])})"
                     for g in gpus)


def during_load_line(result: dict) -> str:
    """One benchmark's GPU readings during its load, as a line of its section; "" without any."""
    readings = result.get("gpu") or {}
    if not readings:
        return ""
    parts = [f"GPU {index}: utilisation mean {x['util_mean']:.0f}%, max {x['util_max']:.0f}%, memory in use "
             f"up to {_mib(x['memory_max_mb'])} ({x['samples']} readings)" for index, x in readings.items()]
    return (f"GPUs during the load (`nvidia-smi` every {INTERVAL_S:g} s while requests ran): "
            + "; ".join(parts) + ".\n")


def section(results: dict) -> str:
    """The document's GPU section: which benchmarks ran on which GPU, or that none did."""
    on_gpu = [name for name, r in results.items() if "skipped" not in r and (r.get("machine") or {}).get("gpus")]
    if not on_gpu:
        return ("## GPU\n\nNot measured: no GPU machine was lent to the session that made these figures. "
                "On one, run `make bench-gpu` (`scripts/bench_gpu.sh`: batching, the engines' RTF and "
                "scaling with the SenseVoiceSmall-shaped FunASR model, every instance on a GPU, in under 8 "
                "minutes); it refuses to run where `nvidia-smi` sees no GPU.\n")
    first = results[on_gpu[0]]["machine"]
    return (f"## GPU\n\nMeasured on a GPU machine: {', '.join(on_gpu)} ({describe(first)}, "
            f"{first['date']}; `make bench-gpu`), every fleet instance and direct worker on a GPU and the "
            "in-process engines on GPU 0. Each of those sections says its machine and what the GPUs did "
            "during its load; the other sections are CPU figures.\n")
