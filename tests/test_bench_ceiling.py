"""The scaling benchmark's ceiling (scripts/bench/ceiling.py) with real copies
of the pipeline on the embedded pocketsphinx engine: each copy transcribes the
whole set once per round and the row counts every recording; a copy that
cannot load, or dies in a round, is reported at once with its reason, and
closing leaves no copy running."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest
import soundfile
from machine import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench.ceiling import Copies
from bench.env import COPIES, engine_settings
from loadtest.config import AudioFile

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def files(audio_dir) -> list[AudioFile]:
    paths = [audio_dir / "cards001.wav", audio_dir / "cards002.wav"]
    return [AudioFile(p.name, p.read_bytes(), soundfile.info(str(p)).duration) for p in paths]


def test_two_copies_each_transcribe_the_set_once_per_round_and_close_leaves_none(files):
    copies = Copies(2, engine_settings("pocketsphinx"), files, repeats=1)
    try:
        one, two = copies.run(1), copies.run(2)
    finally:
        copies.close()
    audio = sum(f.seconds for f in files)
    assert (one["ok"], two["ok"]) == (2, 4)
    assert one["audio_s"] == pytest.approx(audio, abs=0.01) and two["audio_s"] == pytest.approx(2 * audio, abs=0.01)
    assert one["cpu_s"] > 0 and "pipeline copy (bench/ceiling.py)" in two["cpu_by_kind"]
    assert not any(p.is_alive() for p in copies.processes) and not COPIES


def test_a_copy_that_cannot_load_or_dies_in_a_round_is_reported_at_once(files):
    with pytest.raises(RuntimeError, match="failed to load: .*not a CTranslate2 Whisper model folder"):
        Copies(1, {"engine": "whisper", "model": "/nonexistent/model"}, files, repeats=1)
    copies = Copies(1, engine_settings("pocketsphinx"), files, repeats=50)
    threading.Timer(0.5, os.kill, (copies.processes[0].pid, signal.SIGKILL)).start()
    start = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match=r"exited \(exit code -9\)"):
            copies.run(1)
    finally:
        copies.close()
    assert time.monotonic() - start < 30  # not the round's 30-minute timeout
