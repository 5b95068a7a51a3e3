"""Decoding: every format in, 16 kHz mono float32 out; bad input, a clear error."""

import struct

import numpy as np
import pytest
import soundfile
from speech import CLIENT_FORMATS, audio_bytes, encode

from app import audio
from app.errors import BadAudio, TooLarge, UnsupportedMedia

pytestmark = pytest.mark.unit

SOURCE = "sense_and_sensibility_01_austen_64kb-0880.wav"
LIMITS = {"max_seconds": 7200.0, "ffmpeg_timeout": 30.0}


@pytest.fixture(scope="module")
def source(audio_dir):
    samples, rate = soundfile.read(audio_dir / SOURCE, dtype="float32")
    return audio_dir / SOURCE, len(samples) / rate


@pytest.mark.parametrize("name", CLIENT_FORMATS)
def test_every_format_decodes_to_16k_mono_float32(source, name, tmp_path):
    path, seconds = source
    samples = audio.decode(encode(path, name, tmp_path), **LIMITS)
    assert samples.dtype == np.float32 and samples.ndim == 1
    # Lossy codecs pad a few frames at the ends.
    assert abs(len(samples) / audio.SAMPLE_RATE - seconds) < 0.15
    # 0.003: the 6-channel file carries the voice in one channel of six.
    assert np.sqrt(np.mean(samples**2)) > 0.003, "decoded audio is silent"


def test_24_bit_stereo_flac_is_downmixed(audio_dir):
    samples = audio.decode((audio_dir / "jfk.flac").read_bytes(), **LIMITS)
    assert abs(len(samples) / audio.SAMPLE_RATE - 11.0) < 0.05


@pytest.mark.parametrize("name, error", [
    ("bad.wav", BadAudio), ("null.wav", BadAudio), ("awful.wav", BadAudio),
    ("evil.wav", UnsupportedMedia),
])
def test_shared_edge_files_get_a_one_line_reason(audio_dir, name, error):
    with pytest.raises(error) as raised:
        audio.decode((audio_dir / "edge" / name).read_bytes(), **LIMITS)
    assert raised.value.message and "\n" not in raised.value.message


def test_empty_upload():
    with pytest.raises(BadAudio, match="empty file"):
        audio.decode(b"", **LIMITS)


def test_non_audio_is_unsupported_media():
    with pytest.raises(UnsupportedMedia, match="not a recognised audio format"):
        audio.decode(b"%PDF-1.4 this is not audio at all " * 50, **LIMITS)


def test_over_duration_limit_is_413_before_decoding(audio_dir):
    with pytest.raises(TooLarge, match="the limit is 5 s"):
        audio.decode((audio_dir / "jfk.flac").read_bytes(), max_seconds=5, ffmpeg_timeout=30)


def test_over_duration_limit_through_ffmpeg(source, tmp_path):
    path, _ = source
    with pytest.raises(TooLarge, match="the limit is 1 s"):
        audio.decode(encode(path, "mp3", tmp_path), max_seconds=1, ffmpeg_timeout=30)


def test_too_short_audio():
    with pytest.raises(BadAudio, match="audio too short"):
        audio.decode(audio_bytes(np.zeros(100, dtype=np.float32)), **LIMITS)


def test_nan_samples_are_refused():
    samples = np.full(16000, np.nan, dtype=np.float32)
    with pytest.raises(BadAudio, match="NaN or infinite"):
        audio.decode(audio_bytes(samples, subtype="FLOAT"), **LIMITS)


def test_header_claiming_gigabytes_decodes_only_what_is_there():
    data = bytearray(audio_bytes(np.zeros(16000, dtype=np.float32) + 0.1))
    data[40:44] = struct.pack("<I", 0xFFFFFFF0)  # the data chunk claims ~4 GB
    samples = audio.decode(bytes(data), **LIMITS)
    assert len(samples) == 16000


def test_playlist_cannot_make_ffmpeg_read_a_local_file(audio_dir):
    target = audio_dir / SOURCE
    playlist = f"#EXTM3U\n#EXTINF:7,\nfile://{target}\n{target}\n".encode()
    with pytest.raises((UnsupportedMedia, BadAudio)):
        audio.decode(playlist, **LIMITS)
