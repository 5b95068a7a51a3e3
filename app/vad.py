"""Voice activity detection: cut a recording into speech segments.

Silero VAD v6 as ONNX, through the VAD half of faster-whisper (its wheel
ships the model and runs it with onnxruntime): the whole recording goes
through the network in batches of 32 ms windows, instead of one Python call
per window, and no torch is needed; app/silero.py takes the model's
spectrogram by FFT, in less CPU time (docs/benchmarks.md, section 8). These two modules are
the only users of faster_whisper outside app/engines/: of its VAD, not its
speech model.

It runs here, before batching, whatever the engine, so segments of many
requests can share one model call and every segment carries its own start
and end time for SRT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from app.audio import SAMPLE_RATE

# A pause of 100 ms ends a segment (Silero's default). Each segment keeps
# 200 ms of audio either side, not Silero's 30 ms: Whisper misreads words
# clipped at the edge (measured through /asr: WER 0.030 with 30 ms, 0.008
# with 200 ms; Mandarin CER 0.105 against 0).
MIN_SILENCE_MS = 100
SPEECH_PAD_MS = 200
# A long recording is cut chunk by chunk (Segmenter.split_progressively), so
# its first segments are queued for the fleet after a second, not after the
# whole hour's VAD (~7 s). A segment ending within the guard of a chunk's end
# may go on past it: it is found again in the next chunk, which starts there.
CHUNK_SECONDS = 60.0
CHUNK_GUARD_SECONDS = 2.0


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
    """Splits audio at pauses into segments no longer than max_seconds.

    The model is stateless between calls (its recurrent state lives in each
    call), and an onnxruntime session may be run from many threads at once,
    so one copy serves every handler thread without a lock.
    """

    def __init__(self, max_seconds: float, min_seconds: float):
        self.max_seconds = max_seconds
        self.min_seconds = min_seconds
        self._options = None

    def load(self) -> None:
        """Loads the model; called in the worker process, not at import."""
        from faster_whisper.vad import VadOptions, get_vad_model

        from app import silero

        get_vad_model()  # builds the onnxruntime session once, now rather than on the first request
        silero.speed_up_vad()
        self._options = VadOptions(
            min_speech_duration_ms=int(self.min_seconds * 1000),
            # Silero splits longer speech at its last pause before this.
            max_speech_duration_s=self.max_seconds,
            min_silence_duration_ms=MIN_SILENCE_MS, speech_pad_ms=SPEECH_PAD_MS)

    def split(self, samples: np.ndarray) -> list[Segment]:
        """Returns the speech segments, in order; [] for silence."""
        from faster_whisper.vad import get_speech_timestamps

        if self._options is None:
            raise RuntimeError("Segmenter.load() was not called")
        stamps = get_speech_timestamps(np.ascontiguousarray(samples, dtype=np.float32), self._options,
                                       sampling_rate=SAMPLE_RATE)
        segments = [Segment(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]
        return [piece for segment in segments for piece in self._hard_split(segment)]

    def split_progressively(self, samples: np.ndarray) -> Iterator[list[Segment]]:
        """The same segments as `split`, within VAD's own noise at the chunk
        seams (tests/test_vad_chunks.py), yielded a chunk at a time."""
        # Room for two whole segments in a chunk, so each chunk keeps one.
        chunk = int(max(CHUNK_SECONDS, 2 * self.max_seconds + 2 * CHUNK_GUARD_SECONDS) * SAMPLE_RATE)
        start = 0
        while start < len(samples):
            end = min(len(samples), start + chunk)
            offset = start / SAMPLE_RATE
            found = [Segment(s.start + offset, s.end + offset) for s in self.split(samples[start:end])]
            if end == len(samples):
                yield found
                return
            cutoff = (end / SAMPLE_RATE) - CHUNK_GUARD_SECONDS
            kept = [segment for segment in found if segment.end <= cutoff]
            # Resume where the first segment not kept starts (it is cut
            # again, whole), else at the cutoff, which is silence.
            resume = found[len(kept)].start if len(kept) < len(found) else cutoff
            yield kept
            start = max(round(resume * SAMPLE_RATE), start + 1)

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


@dataclasses.dataclass(frozen=True)
class Window:
    """Speech segments sent to the model as one clip, silence between them
    left out; times inside the clip map back to the recording piecewise."""

    segments: tuple[Segment, ...]

    @property
    def start(self) -> float:
        return self.segments[0].start

    @property
    def end(self) -> float:
        return self.segments[-1].end

    @property
    def duration(self) -> float:
        return sum(segment.duration for segment in self.segments)

    def cut(self, samples: np.ndarray) -> np.ndarray:
        if len(self.segments) == 1:
            return self.segments[0].cut(samples)
        return np.concatenate([segment.cut(samples) for segment in self.segments])

    def to_recording(self, seconds: float, *, is_end: bool = False) -> float:
        """A time in the clip as a time in the recording. A time on the seam
        of two segments is the end of the first (is_end) or the start of the next."""
        offset = 0.0
        for index, segment in enumerate(self.segments):
            last = index == len(self.segments) - 1
            past = seconds > offset + segment.duration if is_end else seconds >= offset + segment.duration
            if not past or last:
                return round(min(segment.start + max(seconds - offset, 0.0), segment.end), 3)
            offset += segment.duration
        return self.end


def merge(segments: list[Segment], max_seconds: float) -> list[Window]:
    """Packs consecutive segments into windows of at most max_seconds of speech.

    Whisper pays for a full 30 s window whatever the clip's length, so four
    5 s segments cost four times as much one by one as merged into one window.
    """
    windows: list[list[Segment]] = []
    for segment in segments:
        if windows and sum(s.duration for s in windows[-1]) + segment.duration <= max_seconds:
            windows[-1].append(segment)
        else:
            windows.append([segment])
    return [Window(tuple(group)) for group in windows]
