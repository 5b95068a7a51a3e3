"""Shared fixtures: the shared recordings, apps built per case, real workers."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"
GUNICORN = Path(sys.executable).parent / "gunicorn"


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    """../shared/audio; where the recordings are absent, a skip for a
    developer and a failure in CI, where a skip would hide a broken setup."""
    if not (SHARED_AUDIO / "jfk.flac").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the shared recordings are missing from {SHARED_AUDIO}")
        pytest.skip("../shared/audio is not present")
    return SHARED_AUDIO


@pytest.fixture(scope="session")
def make_tiny_model():
    """scripts/make_tiny_model.py as a module."""
    spec = importlib.util.spec_from_file_location("make_tiny_model", REPO / "scripts" / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, make_tiny_model) -> Path:
    """A tiny random-weight SenseVoice model, built once per test session."""
    return make_tiny_model.make_model(tmp_path_factory.mktemp("models") / "tiny-sensevoice")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def pocketsphinx_app():
    """One ready worker app on the embedded engine, shared by read-only tests."""
    app = create_app(Settings(engine="pocketsphinx", instance_name="test-worker"))
    assert app.extensions["asr"].wait_ready(120), app.extensions["asr"].reason
    return app


@pytest.fixture()
def client(pocketsphinx_app):
    return pocketsphinx_app.test_client()


class Worker:
    """A real Gunicorn worker process on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "ASR_PORT": str(self.port), **env}
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [str(GUNICORN), "-c", "deploy/gunicorn.conf.py", "app:create_app()"],
            cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}: {self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout} s: {self.log()}")

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


@pytest.fixture(scope="module")
def module_worker(tmp_path_factory):
    """Starts real Gunicorn workers shared by one test module's cases:
    `module_worker(ASR_ENGINE="whisper", ...)` returns a ready Worker."""
    workers: list[Worker] = []

    def start(**env: str) -> Worker:
        folder = tmp_path_factory.mktemp(env.get("ASR_INSTANCE_NAME", "worker"))
        worker = Worker(env, folder / "worker.log")
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture()
def start_worker(tmp_path):
    """Starts real Gunicorn workers with extra ASR_* variables; stops them after."""
    workers: list[Worker] = []

    def start(wait: bool = True, **env: str) -> Worker:
        worker = Worker(env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()
