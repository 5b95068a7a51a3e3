"""Readable subtitle cues (app/cues.py): at most 2 lines of 42 characters
and 7 s, cut at word times, nothing lost or reordered."""

import random

import pytest

from app import cues, formats
from app.engines.base import Word

pytestmark = pytest.mark.unit


def segment_of(words: list[Word]) -> formats.SegmentText:
    return formats.SegmentText(words[0].start, words[-1].end, " ".join(w.word for w in words), words=tuple(words))


def test_random_segments_become_cues_within_the_limits_and_keep_every_word():
    rng = random.Random(1)
    for _ in range(500):
        at, words = 0.0, []
        for _ in range(rng.randint(1, 80)):
            length = rng.uniform(0.05, 3)
            words.append(Word(at, at + length, "x" * rng.randint(1, 15) + rng.choice(["", ",", "."])))
            at += length + rng.uniform(0, 0.5)
        segment = segment_of(words)
        made = cues.readable([segment])
        assert " ".join(cue.text.replace("\n", " ") for cue in made) == segment.text
        for cue in made:
            lines = cue.text.split("\n")
            assert len(lines) <= 2
            if " " in cue.text:  # a single over-long word still gets its own cue
                assert all(len(line) <= 42 for line in lines) and cue.end - cue.start <= 7.0


def test_a_full_cue_ends_at_its_clause_and_segments_without_word_times_stay_whole():
    words = [Word(i * 0.4, i * 0.4 + 0.3, w) for i, w in enumerate(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do".split())]
    made = cues.readable([segment_of(words)])
    assert made[0].text.replace("\n", " ").endswith("for you,")
    untimed = formats.SegmentText(0.0, 12.0, "a long segment from an engine that does not time its words " * 2)
    assert cues.readable([untimed]) == [cues.Cue(0.0, 12.0, untimed.text)]
    assert formats.to_srt([untimed]).count("-->") == 1
