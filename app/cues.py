"""Subtitle cues a person can read: where the model timed every word, a
segment is cut into cues of at most two lines of 42 characters and 7
seconds (the usual broadcast limits). A segment without word times stays
one cue: there is no honest time to cut it at."""

from __future__ import annotations

import dataclasses

from app.engines.base import Word

MAX_LINE_CHARS = 42
MAX_CUE_SECONDS = 7.0
CLAUSE_ENDS = (".", ",", "?", "!", ";", ":", "。", "，", "？", "！")


@dataclasses.dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str  # lines joined by "\n"


def readable(segments) -> list[Cue]:
    """The spoken segments as cues, split at word boundaries where timed."""
    cues = []
    for segment in segments:
        if not segment.text:
            continue
        if not segment.words:
            cues.append(Cue(segment.start, segment.end, segment.text))
            continue
        # Languages written without spaces (zh, ja) have words without them.
        joiner = " " if " " in segment.text else ""
        cues.extend(_split(segment.words, joiner))
    return cues


def _split(words: tuple[Word, ...], joiner: str) -> list[Cue]:
    cues, current = [], []
    for word in words:
        if current and not _fits(current + [word], joiner):
            cut = _clause_end(current)
            cues.append(_cue(current[:cut], joiner))
            current = current[cut:]
            if current and not _fits(current + [word], joiner):
                cues.append(_cue(current, joiner))
                current = []
        current.append(word)
    if current:
        cues.append(_cue(current, joiner))
    return cues


def _fits(words: list[Word], joiner: str) -> bool:
    return (words[-1].end - words[0].start <= MAX_CUE_SECONDS
            and wrap([w.word for w in words], joiner) is not None)


def _clause_end(words: list[Word]) -> int:
    """Where a full cue ends: after its last punctuation past the first
    third (a cue that ends with its clause reads better, and the next cue
    does not start with a lone word), else after all of it."""
    for index in range(len(words) - 1, len(words) // 3 - 1, -1):
        if words[index].word.endswith(CLAUSE_ENDS):
            return index + 1
    return len(words)


def _cue(words: list[Word], joiner: str) -> Cue:
    texts = [w.word for w in words]
    # One word longer than a line still gets its cue, on one line.
    lines = wrap(texts, joiner) or [joiner.join(texts)]
    return Cue(words[0].start, words[-1].end, "\n".join(lines))


def wrap(words: list[str], joiner: str) -> list[str] | None:
    """The words on at most two lines of MAX_LINE_CHARS, the lines as
    even as they can be; None when they do not fit."""
    if len(joiner.join(words)) <= MAX_LINE_CHARS:
        return [joiner.join(words)]
    best = None
    for cut in range(1, len(words)):
        first, second = joiner.join(words[:cut]), joiner.join(words[cut:])
        if len(first) <= MAX_LINE_CHARS and len(second) <= MAX_LINE_CHARS:
            unevenness = abs(len(first) - len(second))
            if best is None or unevenness < best[0]:
                best = (unevenness, [first, second])
    return best and best[1]
