"""The embedded engine: CMU PocketSphinx with the en-US model in its wheel.

It needs no download and no GPU, so a worker can always serve something; its
accuracy is far below SenseVoice's, which is why every response names it.
"""

from __future__ import annotations

import numpy as np

from app.engines.base import SAMPLE_RATE, Transcript

MODEL_NAME = "pocketsphinx/en-us"


class PocketSphinxEngine:
    """One pocketsphinx Decoder, reused for every clip (it resets per utterance)."""

    name = "pocketsphinx"
    model = MODEL_NAME
    device = "cpu"
    languages = frozenset({"auto", "en"})

    def __init__(self, decoder) -> None:
        self._decoder = decoder

    @classmethod
    def load(cls) -> PocketSphinxEngine:
        from pocketsphinx import Decoder

        return cls(Decoder(samprate=SAMPLE_RATE, loglevel="FATAL"))

    def transcribe_batch(self, audios: list[np.ndarray], language: str) -> list[Transcript]:
        # PocketSphinx has no batched decoding: one clip after the other.
        return [self._transcribe(audio) for audio in audios]

    def _transcribe(self, audio: np.ndarray) -> Transcript:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, full_utt=True)
        self._decoder.end_utt()
        hypothesis = self._decoder.hyp()
        text = hypothesis.hypstr.strip() if hypothesis is not None else ""
        return Transcript(text=text, language="en")
