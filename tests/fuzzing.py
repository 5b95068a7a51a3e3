"""What the fuzz tests draw from: hypothesis profiles, real sound files to
break, and strategies for broken files, form fields, content types and
hand-written multipart bodies.

The default run is bounded and derandomized (the same examples every time);
`make fuzz` runs the `fuzz_long` tests under the LONG profile, random and
many times larger. ASR_FUZZ_EXAMPLES sets the long runs' examples per test.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from speech import audio_bytes

MAX_REASON_CHARS = 300  # app.errors.MAX_MESSAGE_CHARS
ENDPOINTS = ["/asr", "/asr_simple", "/v1/audio/transcriptions"]

settings.register_profile(
    "asr-fuzz", max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large])
settings.register_profile(
    "asr-fuzz-long", max_examples=int(os.environ.get("ASR_FUZZ_EXAMPLES", "3000")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large])
BOUNDED = settings.get_profile("asr-fuzz")
LONG = settings.get_profile("asr-fuzz-long")


# -- seeds: real headers written by libsndfile --------------------------------------------------


def tone(rate: int, channels: int, container: str, subtype: str, seconds: float = 0.3) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    samples = np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono
    return audio_bytes(samples, rate, subtype, container)


SEEDS = {
    "wav-s16-16k-mono": tone(16000, 1, "WAV", "PCM_16"),
    "wav-s24-44k-stereo-extensible": tone(44100, 2, "WAV", "PCM_24"),
    "wav-f32-8k-mono": tone(8000, 1, "WAV", "FLOAT"),
    "flac-s16-16k-mono": tone(16000, 1, "FLAC", "PCM_16"),
    "flac-s24-48k-stereo": tone(48000, 2, "FLAC", "PCM_24"),
    "ogg-vorbis-22k": tone(22050, 1, "OGG", "VORBIS"),
}
# Where each format keeps the fields worth breaking: WAV's fmt and data
# headers, FLAC's STREAMINFO, Ogg's first page.
HEADER_BYTES = 64
INTERESTING_32 = [0, 1, 2, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 16000, 44100]
@st.composite
def mutated(draw, names=tuple(SEEDS)):
    """A real file with a few header fields, bytes or lengths broken."""
    data = bytearray(SEEDS[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        in_header = draw(st.booleans())
        pos = draw(st.integers(0, min(HEADER_BYTES, len(data)) - 1 if in_header else len(data) - 1))
        kind = draw(st.sampled_from(["flip", "byte", "int32", "int16", "truncate", "insert", "delete"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind in ("int32", "int16"):
            width = 4 if kind == "int32" else 2
            value = draw(st.sampled_from(INTERESTING_32) | st.integers(0, 2**32 - 1)) % 2 ** (8 * width)
            order = draw(st.sampled_from(["little", "big"]))  # WAV is little-endian, FLAC big
            data[pos:pos + width] = value.to_bytes(width, order)
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data)


RANDOM_BYTES = st.binary(max_size=4096)
ANY_UPLOAD = st.one_of(RANDOM_BYTES, mutated(), st.sampled_from(list(SEEDS.values())))


# -- requests -----------------------------------------------------------------------------------

FIELD_NAMES = st.sampled_from(["file", "file", "file", "audio", "File", "files[]"]) | st.text(max_size=12)
FORM_VALUES = st.sampled_from(
    ["", "auto", "en", "zh", "EN-us", "json", "text", "srt", "vtt", "verbose_json", "xml", "segment",
     "word", "whisper-1", "0.0"]) | st.text(max_size=40)
FORM = st.dictionaries(
    st.sampled_from(["lang", "language", "response_format", "timestamp_granularities[]", "model",
                     "prompt", "temperature"]) | st.text(min_size=1, max_size=12),
    FORM_VALUES, max_size=4)
CONTENT_TYPES = st.sampled_from([
    "multipart/form-data; boundary=XyZ", "multipart/form-data", "multipart/form-data; boundary=",
    "application/json", "application/x-www-form-urlencoded", "text/plain", "audio/wav",
    "application/octet-stream", ""]) | st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                                   max_size=60)
# (Newlines and non-Latin-1 in a header are refused by the client libraries
# before sending, and Gunicorn refuses them anyway.)


@st.composite
def raw_multipart(draw):
    """A hand-written multipart body: bytes in names, odd headers, missing ends."""
    name = draw(st.sampled_from([b"file", b"audio", b""]) | st.binary(max_size=16))
    filename = draw(st.sampled_from([b"a.wav", b"", b"../../etc/passwd", b"\xff\xfe"])
                    | st.binary(max_size=16))
    extra = draw(st.sampled_from([b"", b"Content-Type: audio/wav\r\n", b"Content-Length: 99999999\r\n",
                                  b"Content-Transfer-Encoding: base64\r\n"]))
    body = draw(ANY_UPLOAD)
    end = draw(st.sampled_from([b"\r\n--XyZ--\r\n", b"\r\n--XyZ", b"", b"\r\n--XyZ--"]))
    return (b'--XyZ\r\nContent-Disposition: form-data; name="' + name + b'"; filename="' + filename
            + b'"\r\n' + extra + b"\r\n" + body + end)
