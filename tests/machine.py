"""The machine under the tests: the tools and recordings a test needs, free
loopback ports, real Gunicorn workers on them, waiting for an event instead
of sleeping for it, and the processes and listening sockets tests inspect.

Tools and recordings are found one way, here. A missing one skips a
developer's run with the reason; under CI=true it fails the test instead,
since a skip there would hide a broken setup (nginx not installed, the
recordings not mounted) behind a green run.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"
VENV_BIN = Path(sys.executable).parent
GUNICORN = VENV_BIN / "gunicorn"
# How to get each tool the tests need; supervisord comes with the Python
# requirements, into this virtualenv.
INSTALL = {"nginx": "scripts/setup.sh --system", "ffmpeg": "scripts/setup.sh --system",
           **dict.fromkeys(["chromium", "chromedriver"], "scripts/setup.sh --test"),
           **dict.fromkeys(["supervisord", "supervisorctl"], "pip install -r requirements.txt"),
           **dict.fromkeys(["chromium", "chromedriver"], "Debian: apt-get install chromium chromium-driver")}


def on_ci() -> bool:
    return os.environ.get("CI") == "true"


def require(present: bool, what: str) -> None:
    """Nothing when `present`; otherwise a skip saying `what` is missing, or
    under CI=true a failure."""
    if present:
        return
    if on_ci():
        pytest.fail(f"CI=true and {what}: CI must have every component", pytrace=False)
    pytest.skip(what)


def find_tool(name: str) -> str | None:
    """The tool's path: this virtualenv first (supervisord), then PATH, then
    /usr/sbin, where Debian installs nginx and which a normal user's PATH
    lacks (scripts/fleet/config.py finds nginx the same way)."""
    return shutil.which(name, path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", ""), "/usr/sbin"]))


def require_tool(name: str) -> str:
    """The tool's path, or a skip (a failure under CI=true) saying how to install it."""
    path = find_tool(name)
    require(path is not None, f"{name} is not installed ({INSTALL.get(name, 'see README.md')})")
    return path


def require_recordings(*names: str | Path) -> Path:
    """../shared/audio, once the named recordings (jfk.flac when none are named) are there."""
    missing = [str(name) for name in names or ["jfk.flac"] if not (SHARED_AUDIO / name).exists()]
    require(not missing, f"the shared recordings are missing from {SHARED_AUDIO}: {', '.join(missing)}")
    return SHARED_AUDIO


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct free loopback ports (all bound at once, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port_range(count: int) -> int:
    """The first of `count` consecutive free loopback ports (the fleet file's
    shorthand numbers its instances base_port + n)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
                return base
            except OSError:
                continue
    raise AssertionError(f"no {count} consecutive free ports")


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25):
    """Polls until predicate() is truthy and returns its value; fails the test
    naming `what` if that takes longer than `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def instance_processes(port: int) -> list[psutil.Process]:
    """Every process of this user whose environment says it serves `port`
    (Gunicorn master and worker, the decoder process, its resource tracker),
    wherever it hangs in the process tree."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("ASR_PORT") == str(port):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def listeners() -> dict[int, set[tuple[str, int]]]:
    """Listening TCP sockets: port -> {(address, pid)}."""
    out: dict[int, set[tuple[str, int]]] = {}
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN:
            out.setdefault(conn.laddr.port, set()).add((conn.laddr.ip, conn.pid))
    return out


class Worker:
    """A real Gunicorn worker (deploy/gunicorn.conf.py) on a free loopback
    port, its output in `folder`/worker.log. With private_tmp its TMPDIR is an
    empty folder of its own, `tmpdir`, which tests check it leaves empty."""

    def __init__(self, env: dict[str, str], folder: Path, private_tmp: bool = False):
        self.port = free_ports()[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "worker.log"
        self.tmpdir = folder / "tmp" if private_tmp else None
        if self.tmpdir:
            self.tmpdir.mkdir()
            env = {**env, "TMPDIR": str(self.tmpdir)}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open while the worker runs, closed by stop()
        self.process = subprocess.Popen(
            [str(GUNICORN), "-c", "deploy/gunicorn.conf.py", "app:create_app()"], cwd=REPO,
            env={**os.environ, "ASR_PORT": str(self.port), **env}, stdout=self._log, stderr=subprocess.STDOUT)

    def health(self) -> dict | None:
        """/health's body, or None while the worker does not answer."""
        try:
            response = requests.get(self.url + "/health", timeout=5)
        except requests.RequestException:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}: {self.log()}")
            return self.health() is not None
        try:
            wait_for(ready, timeout, f"the worker on port {self.port} to be ready", interval=0.2)
        except AssertionError as error:
            raise AssertionError(f"{error}: {self.log()}") from None

    def serving_pid(self) -> int:
        """The process the Gunicorn master forked to serve (one per worker):
        replaced, it crashed."""
        (child,) = psutil.Process(self.process.pid).children()
        return child.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@contextlib.contextmanager
def workers(tmp_path_factory) -> Iterator[Callable[..., Worker]]:
    """`start(wait=True, private_tmp=False, **ASR_variables)` starts a real
    worker (ready unless wait=False); every one started stops on leaving."""
    started: list[Worker] = []

    def start(wait: bool = True, private_tmp: bool = False, **env: str) -> Worker:
        worker = Worker(env, tmp_path_factory.mktemp(env.get("ASR_INSTANCE_NAME", "worker")), private_tmp)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()

def program_envs(conf: Path) -> dict[str, dict[str, str]]:
    """Each program's environment in a rendered supervisord.conf, as
    supervisord's own config reader gives it."""
    from supervisor.options import ServerOptions

    options = ServerOptions()
    options.here = str(conf.parent)
    section = options.read_config(str(conf))
    return {p.name: p.environment or {} for group in section.process_group_configs
            for p in group.process_configs}


def fake_nvidia_smi(tmp_path: Path, monkeypatch, body: str | None, shebang: str = "#!/bin/sh") -> None:
    """PATH starts with a folder holding an `nvidia-smi` that runs `body`, so a
    real one on this machine is never asked; with body None, PATH is that
    folder alone, empty: no nvidia-smi anywhere."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    if body is None:
        monkeypatch.setenv("PATH", str(folder))
        return
    # A new file each time, moved into place: a test that swaps fakes never
    # runs one half written.
    draft = folder / "nvidia-smi.draft"
    draft.write_text(f"{shebang}\n{body}\n")
    draft.chmod(0o755)
    os.replace(draft, folder / "nvidia-smi")
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
