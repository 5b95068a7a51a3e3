"""What runs beside the users during a load test: the resource sampler and the progress display.

Both are daemon threads that only read shared counters; neither slows a user.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import psutil


class ResourceSampler(threading.Thread):
    """System CPU and memory, this process's CPU, and nvidia-smi's GPUs, every interval."""

    def __init__(self, interval: float, t0: float):
        super().__init__(name="loadtest-sampler", daemon=True)
        self.interval = interval
        self.t0 = t0
        self.samples: list[dict] = []
        self.gpus: dict = {}
        self.stop = threading.Event()
        self.nvidia_smi = shutil.which("nvidia-smi")
        self.me = psutil.Process()
        psutil.cpu_percent(None)
        self.me.cpu_percent(None)

    def _gpu(self) -> list[dict]:
        if not self.nvidia_smi:
            return []
        try:
            out = subprocess.run(
                [self.nvidia_smi, "--query-gpu=index,name,utilization.gpu,memory.used,memory.total",
                 "--format=csv,noheader,nounits"], check=False, capture_output=True, text=True,
                timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        gpus = []
        for line in out.strip().splitlines():
            fields = [f.strip() for f in line.split(",")]
            try:
                index, name, util, used, total = fields[0], fields[1], *map(float, fields[2:5])
            except (ValueError, IndexError):
                continue
            self.gpus[index] = {"name": name, "memory_total_mb": total}
            gpus.append({"index": index, "util": util, "memory_used_mb": used})
        return gpus

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()
        self.sample()  # one at the end, so even a run shorter than the interval has a figure

    def sample(self) -> None:
        ncpu = psutil.cpu_count() or 1
        memory = psutil.virtual_memory()
        self.samples.append({
            "t": round(time.monotonic() - self.t0, 3),
            "cpu_percent": psutil.cpu_percent(None),
            "client_cpu_percent": round(self.me.cpu_percent(None) / ncpu, 1),
            "memory_percent": memory.percent,
            "memory_used_mb": round((memory.total - memory.available) / 2**20),
            "gpus": self._gpu(),
        })


class Progress(threading.Thread):
    """tqdm on a terminal's stderr, a line every 5 s elsewhere; reads counters, never blocks users."""

    def __init__(self, run):  # loadtest.core's run state: planned, done, failed, t0, config
        super().__init__(name="loadtest-progress", daemon=True)
        self.run_state = run
        self.stop = threading.Event()

    def run(self) -> None:
        state, config = self.run_state, self.run_state.config
        bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
                bar = tqdm(total=state.planned, unit="req", file=sys.stderr, dynamic_ncols=True,
                           desc="load test")
            except ImportError:
                pass
        last_line = time.monotonic()
        while True:
            stopped = self.stop.wait(0.25)
            done, failed = state.done, state.failed
            elapsed = time.monotonic() - state.t0
            left = f", {max(0.0, config.duration - elapsed):.0f} s left" if config.duration else ""
            if bar is not None:
                bar.n = done
                bar.set_postfix_str(f"errors {failed}{left}", refresh=False)
                bar.refresh()
            elif stopped or time.monotonic() - last_line >= 5:  # a log, not a terminal: a line now and then
                last_line = time.monotonic()
                print(f"load test: {done}/{state.planned or '?'} done, {failed} errors, "
                      f"{elapsed:.0f} s{left}", file=sys.stderr, flush=True)
            if stopped:
                break
        if bar is not None:
            bar.close()
