"""Long recordings built from the shared clips, and what tests check of
their answers: the transcript against the concatenated references, SRT
cues in order and inside the audio, jobs followed to the end."""

from __future__ import annotations

import io
import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import requests
import soundfile
from machine import SHARED_AUDIO

from tests.speech import ENGLISH, reference

RATE = 16_000
GAP_S = 0.7


def _clips() -> list[tuple[np.ndarray, str]]:
    import soxr

    out = []
    for name in ENGLISH:
        samples, rate = soundfile.read(SHARED_AUDIO / name, dtype="float32")
        samples = samples.mean(axis=1) if samples.ndim > 1 else samples
        if rate != RATE:
            samples = soxr.resample(samples, rate, RATE).astype(np.float32)
        out.append((samples, reference(name)))
    return out


def build(seconds: float, *, speech_every_s: float | None = None) -> tuple[np.ndarray, str]:
    """About `seconds` of the English clips back to back (0.7 s apart), or,
    with speech_every_s, silence with one round of the clips every that many
    seconds. Returns the samples and the reference text in order."""
    clips = _clips()
    gap = np.zeros(int(GAP_S * RATE), np.float32)
    round_ = np.concatenate([p for clip, _ in clips for p in (clip, gap)])
    text = " ".join(t for _, t in clips)
    if speech_every_s is None:
        count = max(1, round(seconds * RATE / len(round_)))
        return np.tile(round_, count), " ".join([text] * count)
    samples = np.zeros(int(seconds * RATE), np.float32)
    starts = range(0, len(samples) - len(round_), int(speech_every_s * RATE))
    for start in starts:
        samples[start:start + len(round_)] = round_
    return samples, " ".join([text] * len(starts))


def flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, RATE, format="FLAC")
    return buffer.getvalue()


CUE = re.compile(r"(\d+):(\d+):(\d+),(\d+) --> (\d+):(\d+):(\d+),(\d+)")


def cue_times(srt: str) -> list[tuple[float, float]]:
    def seconds(h, m, s, ms):
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
    return [(seconds(*m.groups()[:4]), seconds(*m.groups()[4:])) for m in CUE.finditer(srt)]


def check_cues(srt: str, duration: float) -> int:
    """Cues in order, none overlapping the one before (a window transcribed
    twice would repeat its times), all inside the audio; returns the count."""
    cues = cue_times(srt)
    assert cues, "no cues"
    flat = [t for cue in cues for t in cue]
    assert flat == sorted(flat), "cue times go backwards: a window came twice or out of order"
    assert 0 <= flat[0] and flat[-1] <= duration + 0.01
    return len(cues)


def wait_job(url: str, job_id: str, timeout: float, on_poll=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{url}/v1/jobs/{job_id}", timeout=10)
        except requests.RequestException:
            response = None  # a worker restarting under us: Nginx has another
        if response is not None and response.status_code == 200:
            body = response.json()
            if on_poll:
                on_poll(body)
            if body["status"] in ("succeeded", "failed", "cancelled"):
                return body
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished within {timeout} s")


def submit(url: str, data: bytes, name: str = "talk.flac", timeout: float = 300, **form) -> dict:
    """POST /v1/jobs, honouring 503 + Retry-After (every instance busy) as a client should."""
    deadline = time.monotonic() + timeout
    while True:
        response = requests.post(f"{url}/v1/jobs", files={"file": (name, data)}, data=form, timeout=120)
        if response.status_code != 503 or time.monotonic() > deadline:
            assert response.status_code == 202, response.text
            return response.json()
        time.sleep(float(response.headers.get("Retry-After", 1)))


def query(db: Path, sql: str, *args) -> list[tuple]:
    """Reads the fleet's job store (read-only), as an operator would."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(sql, args).fetchall()
