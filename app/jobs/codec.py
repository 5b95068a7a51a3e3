"""What the store keeps, to and from what the worker uses: PCM for audio,
JSON for transcripts. JSON rather than pickle: a store shared by processes
(and later hosts) must never run code it reads back."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from app.engines.base import Piece, Transcript, Word
from app.formats import SegmentText

# int16 halves the store's size against float32; its quantisation noise
# (-96 dB) is far below what any microphone records.
PCM_SCALE = 32767.0


def to_pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * PCM_SCALE).astype("<i2").tobytes()


def from_pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM_SCALE


def dump_transcript(transcript: Transcript) -> str:
    return json.dumps(dataclasses.asdict(transcript))


def load_transcript(text: str) -> Transcript:
    raw = json.loads(text)
    pieces = tuple(Piece(**{**piece, "words": tuple(Word(**word) for word in piece["words"])})
                   for piece in raw.pop("pieces"))
    return Transcript(**raw, pieces=pieces)


def dump_segments(segments: list[SegmentText]) -> list[dict]:
    return [dataclasses.asdict(segment) for segment in segments]


def load_segments(rows: list[dict]) -> list[SegmentText]:
    return [SegmentText(**{**row, "words": tuple(Word(**word) for word in row["words"])}) for row in rows]
