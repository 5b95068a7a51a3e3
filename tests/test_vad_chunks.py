"""A long recording's VAD a chunk at a time (app/vad.py,
Segmenter.split_progressively), which lets the fleet start on the first
segments while the rest is cut: the same speech as one whole pass, within
VAD's noise at the chunk seams, in order and never overlapping."""

from __future__ import annotations

import numpy as np
import pytest

from app import vad
from app.audio import SAMPLE_RATE
from tests.long_audio import build

pytestmark = pytest.mark.worker

# Measured on these 10 minutes: 0.988 (frames of 10 ms in speech in either
# pass that are in both); seams cost little more than a frame or two each.
MIN_IOU = 0.97


def speech_frames(segments: list[vad.Segment], seconds: float) -> np.ndarray:
    frames = np.zeros(int(seconds * 100) + 1, dtype=bool)
    for segment in segments:
        frames[int(segment.start * 100):int(segment.end * 100)] = True
    return frames


def test_chunked_vad_finds_the_same_speech_as_one_pass_in_order(audio_dir):
    samples, _ = build(600)
    seconds = len(samples) / SAMPLE_RATE
    segmenter = vad.Segmenter(max_seconds=30, min_seconds=0.1)
    segmenter.load()
    whole = segmenter.split(samples)
    parts = list(segmenter.split_progressively(samples))
    chunked = [segment for part in parts for segment in part]

    assert len(parts) >= seconds // vad.CHUNK_SECONDS  # yielded as it went, not at the end
    assert all(a.end <= b.start for a, b in zip(chunked, chunked[1:]))
    assert 0 <= chunked[0].start and chunked[-1].end <= seconds
    assert all(segment.duration <= 30 + 1e-6 for segment in chunked)
    a, b = speech_frames(whole, seconds), speech_frames(chunked, seconds)
    iou = (a & b).sum() / (a | b).sum()
    print(f"{len(whole)} segments in one pass, {len(chunked)} chunked; IoU {iou:.4f}")
    assert iou >= MIN_IOU
