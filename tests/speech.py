"""The shared recordings with their references, how tests make audio from
them, and how answers are scored.

One place for what several test files need: which clips have which
transcript, ffmpeg (every encoding a test sends is made with it from a real
recording), samples written as a file in memory, and word and character
error rates computed the same way everywhere.
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import jiwer
import numpy as np
import soundfile
from machine import SHARED_AUDIO, require_tool

LIBRIVOX = [f"sense_and_sensibility_01_austen_64kb-08{n}0.wav" for n in (7, 8, 9)]
# The English clips with a reference transcript: the LibriVox readings and JFK.
ENGLISH = [*LIBRIVOX, "jfk.flac"]
MANDARIN = "zh/asr_example.wav"
# Five short phrases (1 to 3 s), for traffic where each request should be quick.
CARDS = [f"cards00{n}.wav" for n in range(1, 6)]

# ffmpeg output arguments per container/codec; each file is made in the test
# from a real recording.
ENCODINGS = {
    "wav-u8-8k": ["-ar", "8000", "-c:a", "pcm_u8", "-f", "wav"],
    "wav-s16": ["-c:a", "pcm_s16le", "-f", "wav"],
    "wav-s16-44k-stereo": ["-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le", "-f", "wav"],
    "wav-s24-48k": ["-ar", "48000", "-c:a", "pcm_s24le", "-f", "wav"],
    "wav-s32-22k": ["-ar", "22050", "-c:a", "pcm_s32le", "-f", "wav"],
    "wav-f32-16k": ["-c:a", "pcm_f32le", "-f", "wav"],
    "flac": ["-f", "flac"],
    "flac-44k-stereo": ["-ar", "44100", "-ac", "2", "-f", "flac"],
    "flac-6ch": ["-ac", "6", "-f", "flac"],
    "ogg-vorbis": ["-c:a", "libvorbis", "-f", "ogg"],
    "opus": ["-c:a", "libopus", "-f", "ogg"],
    "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
    # The index (moov) first, moved there after writing: an m4a made for the web.
    "m4a-moov-first": ["-c:a", "aac", "-movflags", "+faststart", "-f", "ipod"],
    "m4a-streamable": ["-c:a", "aac", "-movflags", "frag_keyframe+empty_moov", "-f", "ipod"],
    # The index after the data: what phones and most recorders write.
    "m4a-index-at-end": ["-c:a", "aac", "-f", "ipod"],
    "m4a-8k": ["-ar", "8000", "-c:a", "aac", "-f", "ipod"],
    "aac-adts": ["-c:a", "aac", "-f", "adts"],
    "webm": ["-c:a", "libopus", "-f", "webm"],
}
# The plain variants the bad-input catalogue cuts and the soak sends; the
# rest, the odd rates, depths, layouts and codecs a client may send, are
# decoded one by one in tests/test_audio.py.
PLAIN = {"wav-s16", "flac", "flac-44k-stereo", "m4a-moov-first"}
CLIENT_FORMATS = sorted(set(ENCODINGS) - PLAIN)


def ffmpeg(*args: str, stdin: bytes | None = None, timeout: float = 120) -> bytes:
    """ffmpeg's standard output for these arguments (quiet, never reading the terminal)."""
    command = [require_tool("ffmpeg"), "-nostdin", "-loglevel", "error", *args]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout, check=True).stdout


def encode(source_path: Path, fmt: str, out_dir: Path) -> bytes:
    """The recording re-encoded as a client might send it (`fmt` names one of ENCODINGS)."""
    # A real file, not a pipe: MP4 muxers seek back to write their index.
    out = out_dir / f"encoded-{fmt}"
    ffmpeg("-y", "-i", str(source_path), *ENCODINGS[fmt], str(out))
    data = out.read_bytes()
    out.unlink()
    return data


def audio_bytes(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16",
                container: str = "WAV") -> bytes:
    """Samples as a sound file in memory, written by libsndfile."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def reference(name: str) -> str:
    """The transcript beside a recording (jfk.flac -> jfk.txt)."""
    return (SHARED_AUDIO / name).with_suffix(".txt").read_text().strip()


def read(name: str):
    """The recording's samples and rate, as soundfile gives them."""
    return soundfile.read(SHARED_AUDIO / name, dtype="float32")


def normalize_english(text: str) -> str:
    """Lower case, no punctuation, "Mr." spelled out as the references do."""
    text = re.sub(r"\bmr\.?(?=\s)", "mister", text.lower())
    text = re.sub(r"[^a-z0-9' ]+", " ", text.replace("-", " "))
    return " ".join(text.split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer([normalize_english(r) for r in references], [normalize_english(h) for h in hypotheses])


def character_error_rate(reference_text: str, hypothesis: str) -> float:
    """Characters compared with punctuation and spaces removed (the zh references have none)."""
    def strip(text: str) -> str:
        return re.sub(r"[\s\W_]+", "", text)
    return jiwer.cer(strip(reference_text), strip(hypothesis))
