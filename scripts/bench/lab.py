"""Workers and fleets started for a benchmark, and always stopped after it.

A `Lab` owns everything a benchmark run starts: direct Gunicorn workers and
fleets driven by scripts/fleet.py, each with its own run folder and free
loopback ports, so a `make serve` fleet on this machine is never touched.
Their process trees join bench.env.ROOTS, whose CPU time the benchmarks count.
On a machine with GPUs (bench.gpu) every instance goes on one, as a fleet
places them: fleet instances take turns over the GPUs (`device = N`), direct
workers likewise through CUDA_VISIBLE_DEVICES; without one all stay on the CPU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import psutil
import requests

from . import gpu
from .env import FLEET, GUNICORN, PYTHON, REPO, ROOTS


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "ASR_"))}
    return {**env, **(extra or {})}


def wait_healthy(url: str, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not healthy within {timeout:g} s")


class Server:
    """One server process on 127.0.0.1, in its own process group, logging to
    `work/<kind>-<name>.log`; stopped with SIGTERM, then SIGKILL after `stop_s`."""

    stop_s = 45.0

    def __init__(self, work: Path, kind: str, name: str, command: list[str], cwd: Path, env: dict, port: int):
        self.port, self.name, self.kind = port, name, kind
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = work / f"{kind}-{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - the server writes to it until stop()
        self.command = command
        self.process = subprocess.Popen(command, cwd=cwd, env=_clean_env(env), stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        ROOTS.add(self.process.pid)

    def wait_ready(self, timeout: float = 300) -> Self:
        try:
            wait_healthy(self.url, timeout, lambda: self.process.poll() is None)
        except RuntimeError:
            raise RuntimeError(f"{self.kind} {self.name} not ready: {self.log_path.read_text()[-1500:]}") from None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.kind} {self.name} exited: {self.log_path.read_text()[-1500:]}")
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(self.stop_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        ROOTS.discard(self.process.pid)


class Worker(Server):
    """One Gunicorn worker started directly: `gunicorn -c deploy/gunicorn.conf.py 'app:create_app()'`."""

    def __init__(self, work: Path, name: str, env: dict):
        port = free_ports(1)[0]
        self.env = env
        super().__init__(work, "worker", name, [str(GUNICORN), "-c", "deploy/gunicorn.conf.py", "app:create_app()"],
                         REPO, {**env, "ASR_PORT": str(port), "ASR_INSTANCE_NAME": name}, port)

    def app_pid(self) -> int:
        """The Gunicorn worker process (the master's child) that runs the app."""
        return psutil.Process(self.process.pid).children()[0].pid


# Requests one bench instance admits (the fleet's default is 2 per CPU
# instance, for latency): the benchmarks offer up to 8 users to one fleet and
# measure throughput, which must not count only the requests a full instance
# happened to let in while the rest got an immediate 503.
MAX_CONCURRENT = 8


class Fleet:
    """A fleet under scripts/fleet.py with its own fleet file, run folder and ports."""

    def __init__(self, work: Path, name: str, *, pool: int, size: int, balancing: str, engine: str,
                 model: str = "", env: dict | None = None, gpus: int = 0):
        self.root = work / f"fleet-{name}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config, self.run_dir = self.root / "fleet.toml", self.root / "run"
        ports = free_ports(pool + 1)
        self.url = f"http://127.0.0.1:{ports[0]}"
        # With GPUs, instance i goes on GPU i mod gpus: what the fleet's own `gpus = "auto"` does.
        devices = [str(i % gpus) if gpus else '"cpu"' for i in range(pool)]
        instances = "".join(f'\n[[instance]]\nport = {p}\ndevice = {d}\nweight = 1\n'
                            for p, d in zip(ports[1:], devices))
        worker_env = "".join(f'{k} = "{v}"\n' for k, v in (env or {}).items())
        self.toml = (f'front_port = {ports[0]}\nengine = "{engine}"\n'
                     + (f'model = "{model}"\n' if model else "")
                     + f'instances = {size}\nmin_instances = 1\nmax_instances = {pool}\n'
                       f'balancing = "{balancing}"\n{instances}\n[worker]\nstartsecs = 2\n'
                       f'max_concurrent = {MAX_CONCURRENT}\n'
                       f'\n[worker.env]\n{worker_env}\n[scaling]\nenabled = false\n')
        self.config.write_text(self.toml)
        self.size = size
        self.started = False

    def cli(self, *args: str, timeout: float = 400) -> str:
        command = [str(PYTHON), str(FLEET), "--config", str(self.config), "--run-dir", str(self.run_dir),
                   *args]
        result = subprocess.run(command, check=False, cwd=REPO, env=_clean_env(), text=True,
                                capture_output=True, timeout=timeout)
        if result.returncode:
            raise RuntimeError(f"fleet.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self) -> Fleet:
        self.started = True
        self.cli("serve", "--no-setup", "--timeout", "300")
        ROOTS.add(int((self.run_dir / "supervisord.pid").read_text()))
        return self

    def scale(self, size: int) -> None:
        if size != self.size:
            self.cli("scale", str(size))
            self.size = size
            wait_healthy(self.url, 60)

    def stop(self) -> None:
        if not self.started:
            return
        try:
            self.cli("stop", timeout=200)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"bench: {error}", file=sys.stderr)
        pid_file = self.run_dir / "supervisord.pid"
        if pid_file.exists():  # whatever survived a failed stop
            try:
                ROOTS.discard(int(pid_file.read_text()))
                parent = psutil.Process(int(pid_file.read_text()))
                for proc in parent.children(recursive=True) + [parent]:
                    proc.kill()
            except (psutil.Error, ValueError):
                pass


class Lab:
    """Starts workers and fleets on demand and stops every one of them on exit."""

    def __init__(self, work: Path, gpus: int | None = None):
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.things: list = []
        self.gpus = gpu.count() if gpus is None else gpus
        self._workers_placed = 0

    def worker_env(self, env: dict) -> dict:
        """A direct worker's env, on the next GPU in turn when there are GPUs (and
        the benchmark did not pin one itself), else unchanged: the CPU."""
        if not self.gpus or "CUDA_VISIBLE_DEVICES" in env:
            return env
        self._workers_placed += 1
        return {**env, **gpu.worker_env((self._workers_placed - 1) % self.gpus)}

    def worker(self, name: str, env: dict, timeout: float = 300) -> Worker:
        worker = Worker(self.work, name, self.worker_env(env))
        self.things.append(worker)
        return worker.wait_ready(timeout)

    def fleet(self, name: str, **kwargs) -> Fleet:
        fleet = Fleet(self.work, name, gpus=self.gpus, **kwargs)
        self.things.append(fleet)
        return fleet.start()

    def release(self, thing) -> None:
        thing.stop()
        self.things.remove(thing)

    def __enter__(self) -> Self:
        # SIGTERM (`timeout` in scripts/bench_gpu.sh, a kill) unwinds like Ctrl-C, through __exit__:
        # the fleets and workers run in sessions of their own and would outlive this process.
        self._previous_term = signal.signal(signal.SIGTERM, _interrupt)
        return self

    def __exit__(self, *exc) -> None:
        try:
            for thing in reversed(self.things):
                try:
                    thing.stop()
                except Exception as error:  # noqa: BLE001 - one failed stop must not leave the rest running
                    print(f"bench: stopping {thing} failed: {type(error).__name__}: {error}",
                          file=sys.stderr, flush=True)
            self.things.clear()
        finally:
            signal.signal(signal.SIGTERM, self._previous_term)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
