"""Output formats: SRT, WebVTT, plain text and the OpenAI JSON bodies.

Every function takes the transcribed segments and returns a body; nothing
here knows about HTTP or the model.
"""

from __future__ import annotations

import dataclasses

from app import cues
from app.engines.base import Word


@dataclasses.dataclass(frozen=True)
class SegmentText:
    """A transcribed segment: times in seconds from the recording's start,
    tags already stripped. words and the scores are the model's own, where
    it gives them (Whisper), else empty and None."""

    start: float
    end: float
    text: str
    emotion: str | None = None
    event: str | None = None
    words: tuple[Word, ...] = ()
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None

    def as_dict(self) -> dict:
        return {
            "start": round(self.start, 3), "end": round(self.end, 3), "text": self.text,
            "emotion": self.emotion, "event": self.event,
        }


def timestamp(seconds: float, decimal_marker: str) -> str:
    """Formats seconds as HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (VTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _spoken(segments: list[SegmentText]) -> list[SegmentText]:
    # A cue with no words is noise in a subtitle file.
    return [segment for segment in segments if segment.text]


def to_srt(segments: list[SegmentText]) -> str:
    # app/cues.py: with word times, cues are cut to readable lengths.
    rows = [
        f"{index}\n{timestamp(c.start, ',')} --> {timestamp(c.end, ',')}\n{c.text}\n"
        for index, c in enumerate(cues.readable(segments), start=1)
    ]
    return "\n".join(rows)


def to_vtt(segments: list[SegmentText]) -> str:
    rows = [
        f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n{c.text}\n"
        for c in cues.readable(segments)
    ]
    return "WEBVTT\n\n" + "\n".join(rows)


def to_text(segments: list[SegmentText]) -> str:
    return " ".join(segment.text for segment in _spoken(segments))


SCORES = ("avg_logprob", "compression_ratio", "no_speech_prob")


def usage(duration: float) -> dict:
    """OpenAI's usage for audio billed by its length."""
    return {"type": "duration", "seconds": round(duration, 3)}


def to_json(segments: list[SegmentText], *, duration: float, model: str) -> dict:
    return {"text": to_text(segments), "model": model, "usage": usage(duration)}


def to_verbose_json(segments: list[SegmentText], *, language: str, duration: float,
                    model: str, task: str = "transcribe",
                    granularities: frozenset[str] = frozenset({"segment"})) -> dict:
    """OpenAI's verbose_json: `segments` and/or top-level `words`, as asked.
    Scores an engine does not compute are left out, never filled with a
    made-up constant."""
    rows = []
    for index, s in enumerate(_spoken(segments)):
        row = {"id": index, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3),
               "text": s.text, "tokens": [], "temperature": 0.0}
        row.update({name: getattr(s, name) for name in SCORES if getattr(s, name) is not None})
        rows.append(row)
    body = {
        "task": task,
        "language": language,
        "duration": round(duration, 3),
        "text": to_text(segments),
        "model": model,
    }
    if "segment" in granularities:
        body["segments"] = rows
    if "word" in granularities:
        body["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                         for s in _spoken(segments) for w in s.words]
    body["usage"] = usage(duration)
    return body


RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
