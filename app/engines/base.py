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
class DecodeOptions:
    """How to decode: one batch shares them, so they are the batcher's key."""

    language: str = "auto"
    task: str = "transcribe"
    # Text the model conditions on (Whisper's initial prompt).
    prompt: str | None = None
    temperature: float = 0.0
    # Time each word (SRT and VTT cues, verbose_json words): an alignment
    # pass after recognition that a plain-text answer does not need. On by
    # default, for answers whose format is chosen later (jobs, /asr).
    words: bool = True


@dataclasses.dataclass(frozen=True)
class Word:
    """One word, in seconds from the start of the clip it came from."""

    start: float
    end: float
    word: str
    probability: float | None = None


@dataclasses.dataclass(frozen=True)
class Piece:
    """A timed stretch of one clip's text, as the model itself timed it.

    The scores are the model's own where it has them (Whisper), else None:
    never a made-up constant.
    """

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None


@dataclasses.dataclass(frozen=True)
class Transcript:
    """One clip's recognition result.

    pieces: the model's own timing of the text, relative to the clip's start;
    empty when the model gives none, and the text then spans the whole clip.
    """

    text: str
    language: str | None = None
    emotion: str | None = None
    event: str | None = None
    pieces: tuple[Piece, ...] = ()


class Engine(Protocol):
    """A loaded speech model.

    name: the engine family, "funasr", "whisper" or "pocketsphinx".
    model: what is served, as shown to users in /health and every response.
    device: "cpu" or "cuda:0".
    languages: the language codes this model accepts ("auto" included when it
        detects the language itself).
    window_seconds: the audio the model always processes at once (Whisper's
        30 s), so short speech segments are merged up to it; None when a
        shorter clip costs less.
    An engine that pads a batch to its longest clip says so with a true
    `pads_to_longest` attribute, and the batcher keeps lengths close.
    One for which batching costs more than it saves on the CPU says so with a
    false `batches_on_cpu`: its CPU workers run one segment per model call.
    """

    name: str
    model: str
    device: str
    languages: frozenset[str]
    window_seconds: float | None

    def transcribe_batch(self, audios: list[np.ndarray], options: DecodeOptions) -> list[Transcript]:
        """Transcribes 16 kHz mono float32 clips, one Transcript per clip."""
        ...
