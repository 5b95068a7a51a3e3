"""The VAD's spectrogram by FFT (app/silero.py): the same speech
probabilities as Silero v6 as faster-whisper ships it, so the same segments,
on real recordings; and the worker's segmenter uses it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from faster_whisper.utils import get_assets_path
from faster_whisper.vad import SileroVADModel, get_vad_model

from app import audio, silero, vad
from tests.long_audio import build

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def sessions():
    segmenter = vad.Segmenter(max_seconds=30, min_seconds=0.1)
    segmenter.load()
    shipped = SileroVADModel(os.path.join(get_assets_path(), "silero_vad_v6.onnx"))
    return segmenter, shipped, get_vad_model()


def test_the_segmenter_uses_the_fft_spectrum(sessions):
    _, _, model = sessions
    assert isinstance(model.session, silero.SpectrumFirstSession)
    assert silero.speed_up_vad()  # a second call keeps it


@pytest.mark.parametrize("name", ["jfk.flac", "sense_and_sensibility_01_austen_64kb-0870.wav",
                                  "zh/asr_example.wav"])
def test_speech_probabilities_are_the_models_own(sessions, audio_dir, name):
    _, shipped, model = sessions
    samples = audio.decode((audio_dir / name).read_bytes(), max_seconds=600, ffmpeg_timeout=30)
    padded = np.pad(samples, (0, silero.WINDOW - len(samples) % silero.WINDOW))
    fft_probabilities = model(padded)
    shipped_probabilities = shipped(padded)
    assert fft_probabilities.shape == shipped_probabilities.shape == (len(padded) // silero.WINDOW,)
    assert np.abs(fft_probabilities - shipped_probabilities).max() < 1e-5
    # Speech is there to be found: the comparison is not of two flat lines.
    assert fft_probabilities.max() > 0.9 and fft_probabilities.min() < 0.1


def test_ten_minutes_give_the_same_segments_either_way(sessions, audio_dir):
    """Long enough for several of faster-whisper's 10,000-step batches, each
    run by SpectrumFirstSession in calls of STEPS_PER_CALL with the LSTM
    state carried across."""
    segmenter, shipped, model = sessions
    samples, _ = build(600)
    assert len(samples) // silero.WINDOW > 10_000 + silero.STEPS_PER_CALL
    with_fft = segmenter.split(samples)
    fft_session = model.session
    model.session = shipped.session
    try:
        as_shipped = segmenter.split(samples)
    finally:
        model.session = fft_session
    assert len(with_fft) > 100
    assert with_fft == as_shipped


def test_a_model_the_cut_does_not_fit_keeps_the_shipped_session(sessions):
    """A model without the spectrum node (a future faster-whisper) is
    refused at load and the VAD goes on as shipped, with a warning."""
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(silero, "SPECTRUM", "no-such-node")
            get_vad_model.cache_clear()
            assert not silero.speed_up_vad()
            assert not isinstance(get_vad_model().session, silero.SpectrumFirstSession)
    finally:
        get_vad_model.cache_clear()
        assert silero.speed_up_vad()
