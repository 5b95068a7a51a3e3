"""Voice activity detection: cut a recording into speech segments.

Silero VAD, from the weights inside the `silero-vad` wheel: the same model
FunASR loads for `vad_model="silero-vad"`. It runs here, before batching,
whatever the engine, so segments of many requests can share one model call
and every segment carries its own start and end time for SRT.
"""

from __future__ import annotations

import dataclasses
import queue

import numpy as np

from app.audio import SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class Segment:
    """A slice of speech, in seconds from the start of the recording."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    def cut(self, samples: np.ndarray) -> np.ndarray:
        return samples[int(self.start * SAMPLE_RATE) : int(self.end * SAMPLE_RATE)]


class Segmenter:
    """Splits audio at pauses into segments no longer than max_seconds."""

    def __init__(self, max_seconds: float, min_seconds: float, copies: int = 2):
        self.max_seconds = max_seconds
        self.min_seconds = min_seconds
        self.copies = copies
        # Silero keeps recurrent state inside the model between chunks, so a
        # model serves one request at a time. A few copies (2 MB each) let
        # handler threads segment in parallel instead of queueing on one lock
        # (profiled: 38 ms per request waiting with a single model).
        self._models: queue.Queue = queue.Queue()
        self._loaded = False

    def load(self) -> None:
        """Loads the weights; called in the worker process, not at import."""
        from silero_vad import load_silero_vad

        for _ in range(self.copies):
            self._models.put(load_silero_vad(onnx=False))
        self._loaded = True

    def split(self, samples: np.ndarray) -> list[Segment]:
        """Returns the speech segments, in order; [] for silence."""
        import torch
        from silero_vad import get_speech_timestamps

        if not self._loaded:
            raise RuntimeError("Segmenter.load() was not called")
        model = self._models.get()
        try:
            with torch.inference_mode():
                stamps = get_speech_timestamps(
                    torch.from_numpy(samples),
                    model,
                    sampling_rate=SAMPLE_RATE,
                    min_speech_duration_ms=int(self.min_seconds * 1000),
                    # Silero splits longer speech at its last pause before this.
                    max_speech_duration_s=self.max_seconds,
                )
        finally:
            self._models.put(model)
        segments = [Segment(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]
        return [piece for segment in segments for piece in self._hard_split(segment)]

    def _hard_split(self, segment: Segment) -> list[Segment]:
        # Silero pads each segment, which can push it a little past the limit.
        pieces = []
        start = segment.start
        while segment.end - start > self.max_seconds:
            pieces.append(Segment(start, start + self.max_seconds))
            start += self.max_seconds
        if segment.end - start >= self.min_seconds:
            pieces.append(Segment(start, segment.end))
        return pieces


def whole(samples: np.ndarray) -> list[Segment]:
    """The recording as one segment, for requests that skip VAD."""
    return [Segment(0.0, len(samples) / SAMPLE_RATE)]
