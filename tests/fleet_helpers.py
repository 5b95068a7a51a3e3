"""A real fleet for tests: its own run folder and free ports, so it never
collides with a `make serve` fleet; driven through scripts/fleet.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
CLIP = SHARED_AUDIO / "cards001.wav"
sys.path.insert(0, str(REPO / "scripts"))


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all bound at once, then released)."""
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


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    """Polls until predicate() is truthy; fails the test with `what` if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Fleet:
    def __init__(self, root: Path, weights: list[int], active: int, max_upload_mb: float = 1):
        self.root = root
        self.run_dir = root / "run"
        self.config = root / "fleet.toml"
        ports = free_ports(len(weights) + 1)
        self.front_port, self.ports = ports[0], ports[1:]
        self.url = f"http://127.0.0.1:{self.front_port}"
        self.names = [f"asr-{port}" for port in self.ports]
        self.weights = dict(zip(self.names, weights))
        instances = "".join(f"\n[[instance]]\nport = {port}\ndevice = \"cpu\"\nweight = {weight}\n"
                            for port, weight in zip(self.ports, weights))
        self.base_config = f"""
front_port = {self.front_port}
engine = "pocketsphinx"
instances = {active}
min_instances = 2
max_instances = {len(weights)}
{instances}
[worker]
max_upload_mb = {max_upload_mb}
request_timeout_s = 60
startsecs = 2
[health]
interval_s = 0.5
timeout_s = 2
eject_after = 3
restore_after = 2
restart_after = 6
max_load_s = 120
[scaling]
enabled = false
drain_timeout_s = 60
"""
        self.write_config()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "ASR_"))}

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(self.base_config + extra)

    def cli(self, *args: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "fleet.py"), "--config", str(self.config),
             "--run-dir", str(self.run_dir), *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"fleet.py {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result

    def status(self) -> dict:
        return requests.get(self.url + "/fleet", timeout=5).json()

    def instance(self, name: str) -> dict:
        return next(i for i in self.status()["instances"] if i["name"] == name)

    def events(self) -> str:
        path = self.run_dir / "logs" / "fleet-events.log"
        return path.read_text() if path.exists() else ""

    def pid(self, name: str) -> int:
        out = subprocess.run([str(Path(sys.executable).parent / "supervisorctl"), "-c",
                              str(self.run_dir / "supervisord.conf"), "pid", name],
                             capture_output=True, text=True).stdout.strip()
        return int(out) if out.isdigit() else 0

    def signal_instance(self, name: str, sig: int) -> int:
        """Signals the instance's whole process group (Gunicorn master and worker)."""
        pid = self.pid(name)
        assert pid, f"{name} has no pid"
        os.killpg(os.getpgid(pid), sig)
        return pid

    def settled(self, size: int | None = None) -> bool:
        """Every active instance healthy and in the upstream, nothing in maintenance."""
        try:
            status = self.status()
        except (OSError, ValueError):
            return False
        active = [i for i in status["instances"] if i["active"]]
        return ((size is None or status["size"] == size) and
                all(i["state"] == "ok" and i["in_upstream"] for i in active))

    def wait_settled(self, size: int | None = None, timeout: float = 60) -> None:
        wait_for(lambda: self.settled(size), timeout, f"the fleet to settle at size {size}")

    def start(self) -> None:
        result = self.cli("serve", "--no-setup", "--timeout", "120", check=False, timeout=200)
        if result.returncode != 0:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}"
                             for p in sorted((self.run_dir / "logs").glob("*.log")))
            self.stop()
            raise AssertionError(f"fleet did not start:\n{result.stdout}\n{result.stderr}\n{logs}")

    def stop(self) -> None:
        try:
            self.cli("stop", timeout=180, check=False)
        finally:
            # Whatever survived (a failed stop): kill supervisord and its tree.
            pid_file = self.run_dir / "supervisord.pid"
            if pid_file.exists():
                try:
                    parent = psutil.Process(int(pid_file.read_text()))
                    for proc in parent.children(recursive=True) + [parent]:
                        proc.send_signal(signal.SIGCONT)
                        proc.kill()
                except (psutil.Error, ValueError):
                    pass


def post_clip(url: str, timeout: float = 120, **headers) -> tuple[object, str | None]:
    """One transcription on a fresh connection: (status or exception text, worker)."""
    try:
        with CLIP.open("rb") as handle:
            response = requests.post(url + "/asr", files={"file": handle}, timeout=timeout, headers=headers)
        body_ok = response.status_code != 200 or response.json().get("code") == 0
        return (response.status_code if body_ok else "bad body"), response.headers.get("X-ASR-Worker")
    except (requests.RequestException, ValueError) as error:
        return f"{type(error).__name__}: {error}"[:200], None


class Stream:
    """Transcription requests from `concurrency` threads until stopped (and at
    least `minimum` sent, at most `maximum`)."""

    def __init__(self, url: str, concurrency: int = 3, minimum: int = 0, maximum: int = 10_000):
        self.url, self.minimum, self.maximum = url, minimum, maximum
        self.results: list[tuple[object, str | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def _take(self) -> bool:
        with self._lock:
            if self._sent >= self.maximum or (self._stop.is_set() and self._sent >= self.minimum):
                return False
            self._sent += 1
            return True

    def _run(self) -> None:
        while self._take():
            result = post_clip(self.url)
            with self._lock:
                self.results.append(result)

    def __enter__(self) -> Stream:
        self._sent = 0
        for thread in self._threads:
            thread.start()
        return self

    def wait_done(self, count: int, timeout: float = 120) -> None:
        wait_for(lambda: len(self.results) >= count, timeout, f"{count} responses")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=300)

    def failures(self) -> list:
        return [r for r in self.results if r[0] != 200]

    def by_worker(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, worker in self.results:
            counts[worker] = counts.get(worker, 0) + 1
        return counts


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
