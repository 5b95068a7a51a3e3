"""The engine interface: what the batcher needs from any speech model.

An engine owns one loaded model. Only the inference thread calls it, so an
engine needs no locking of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16_000


@dataclasses.dataclass(frozen=True)
class Transcript:
    """One segment's recognition result."""

    text: str
    language: str | None = None
    emotion: str | None = None
    event: str | None = None


class Engine(Protocol):
    """A loaded speech model.

    name: the engine family, "funasr" or "pocketsphinx".
    model: what is served, as shown to users in /health and every response.
    device: "cpu" or "cuda:0".
    languages: the `lang` values this model accepts ("auto" included when it
        detects the language itself).
    """

    name: str
    model: str
    device: str
    languages: frozenset[str]

    def transcribe_batch(
        self, audios: list[np.ndarray], language: str
    ) -> list[Transcript]:
        """Transcribes 16 kHz mono float32 clips, one Transcript per clip."""
        ...
