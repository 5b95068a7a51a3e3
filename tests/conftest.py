"""Shared fixtures: the shared recordings, apps built in this process, real
Gunicorn workers (the bad-input catalogue's among them), a fleet settled
before each test, and a private temp folder. How a worker is started is
tests/machine.py's; here is only how long it lives."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest
from bad_input import serve_catalogue
from machine import REPO, require_recordings, workers

from app import create_app
from app.settings import Settings


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    """../shared/audio: a skip for a developer without it, a failure in CI."""
    return require_recordings()


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


@pytest.fixture(scope="session")
def ready_app():
    """`ready_app(Settings(...))`: a worker app in this process, its model loaded."""
    def build(settings: Settings):
        app = create_app(settings)
        assert app.extensions["asr"].wait_ready(120), app.extensions["asr"].reason
        return app
    return build


@pytest.fixture(scope="session")
def pocketsphinx_app(ready_app):
    """One ready worker app on the embedded engine, shared by read-only tests."""
    return ready_app(Settings(engine="pocketsphinx", instance_name="test-worker"))


@pytest.fixture()
def client(pocketsphinx_app):
    return pocketsphinx_app.test_client()


@pytest.fixture(scope="module")
def module_worker(tmp_path_factory):
    """Starts real Gunicorn workers shared by one test module's cases:
    `module_worker(ASR_ENGINE="whisper", ...)` returns a ready Worker."""
    with workers(tmp_path_factory) as start:
        yield start


@pytest.fixture()
def start_worker(tmp_path_factory):
    """Starts real Gunicorn workers for one test: `start_worker(wait=False,
    private_tmp=True, ASR_ENGINE=...)`; they stop after it."""
    with workers(tmp_path_factory) as start:
        yield start


@pytest.fixture(scope="session")
def catalogue_worker(tmp_path_factory, audio_dir):
    """The one worker both halves of the bad-input catalogue
    (test_bad_input_*.py) are sent to, so the check after them covers every row."""
    with workers(tmp_path_factory) as start, serve_catalogue(start, audio_dir,
                                                             tmp_path_factory.mktemp("media")) as served:
        yield served


@pytest.fixture()
def settled(fleet):
    """For a test module with a `fleet` fixture: each test starts from the
    fleet's active instances all healthy and in the upstream, whatever the
    test before killed, froze or scaled."""
    fleet.wait_settled(fleet.active, timeout=90)
    return fleet


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """Points this process and its children (ffmpeg) at an empty temp folder,
    and checks it is empty again after the test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    yield folder
    assert list(folder.iterdir()) == [], "a temp file was left behind"
