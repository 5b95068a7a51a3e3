"""Fuzzing the decoder, `app.audio.decode`, with hypothesis.

Random bytes and real sound files with broken headers, bytes and lengths
(tests/fuzzing.py): the decoder may only return 16 kHz mono float32 of a
sane length, finite, or raise an `ASRError` with a one-line 4xx reason, and
may never leave a file in the temp folder. The default run is bounded and
derandomized; `make fuzz` runs test_decode_long, random and many times larger.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzzing import BOUNDED, LONG, MAX_REASON_CHARS, RANDOM_BYTES, SEEDS, mutated
from hypothesis import given
from hypothesis import strategies as st

from app import audio
from app.errors import ASRError

pytestmark = pytest.mark.worker

LIMITS = {"max_seconds": 600.0, "ffmpeg_timeout": 20.0}


def check_decode(data: bytes) -> None:
    try:
        samples = audio.decode(data, **LIMITS)
    except ASRError as error:
        assert 400 <= error.status < 500, (error.status, error.message)
        assert error.message and "\n" not in error.message and len(error.message) <= MAX_REASON_CHARS
        return
    assert isinstance(samples, np.ndarray) and samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) >= audio.MIN_SECONDS * audio.SAMPLE_RATE
    assert len(samples) <= (LIMITS["max_seconds"] + 1) * audio.SAMPLE_RATE
    assert np.isfinite(samples).all()


def test_every_seed_decodes():
    for name, data in SEEDS.items():
        assert len(audio.decode(data, **LIMITS)) > 0, name


@BOUNDED
@given(data=RANDOM_BYTES)
def test_decode_random_bytes(private_tmp, data):
    check_decode(data)


@BOUNDED
@given(data=mutated())
def test_decode_mutated_real_headers(private_tmp, data):
    check_decode(data)


@pytest.mark.fuzz_long
@LONG
@given(data=st.one_of(st.binary(max_size=65536), mutated()))
def test_decode_long(private_tmp, data):
    check_decode(data)
