import pytest

from app import formats
from app.formats import SegmentText

pytestmark = pytest.mark.unit

SEGMENTS = [
    SegmentText(0.0, 1.5, "hello there"),
    SegmentText(2.0, 2.5, ""),  # a segment with no words gets no cue
    SegmentText(3661.25, 3662.0, "an hour later", emotion="happy", event="speech"),
]


def test_timestamps_round_to_milliseconds():
    assert formats.timestamp(0, ",") == "00:00:00,000"
    assert formats.timestamp(3661.2506, ",") == "01:01:01,251"
    assert formats.timestamp(59.9999, ".") == "00:01:00.000"


def test_srt_numbers_cues_and_skips_empty_ones():
    assert formats.to_srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:01,500\nhello there\n\n"
        "2\n01:01:01,250 --> 01:01:02,000\nan hour later\n"
    )


def test_vtt_has_header_and_dotted_times():
    assert formats.to_vtt(SEGMENTS) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nhello there\n\n"
        "01:01:01.250 --> 01:01:02.000\nan hour later\n"
    )


def test_text_joins_spoken_segments():
    assert formats.to_text(SEGMENTS) == "hello there an hour later"


def test_verbose_json_follows_openai_shape():
    body = formats.to_verbose_json(SEGMENTS, language="en", duration=3662.0, model="m")
    assert body["task"] == "transcribe" and body["language"] == "en" and body["model"] == "m"
    assert [s["id"] for s in body["segments"]] == [0, 1]
    assert body["segments"][1]["start"] == 3661.25
    assert body["text"] == "hello there an hour later"


def test_segment_dict_reports_tags():
    assert SEGMENTS[2].as_dict() == {
        "start": 3661.25, "end": 3662.0, "text": "an hour later", "emotion": "happy", "event": "speech"}
