"""The request path's steps timed one by one, in this process, on the real recordings.

What a worker's handler thread does for one /asr request, each step alone
(median of several runs, one thread, an idle machine): the multipart parse,
the decode (and within it the resample and the finiteness checks), Silero VAD,
and the response body. The profile says where time goes under load; this
says what each step costs by itself, in milliseconds.
"""

from __future__ import annotations

import io
import json
import statistics
import time

import numpy as np

from loadtest.config import AudioFile

from . import env as _env  # noqa: F401 - importing it puts the repository on sys.path for `app`

REPEATS = 5


def _ms(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _multipart(upload: AudioFile):
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    data = {"file": (io.BytesIO(upload.data), upload.name)}
    environ = EnvironBuilder(method="POST", data=data).get_environ()
    body = environ["wsgi.input"].read()

    def parse() -> bytes:
        env = dict(environ, **{"wsgi.input": io.BytesIO(body)})
        return Request(env).files["file"].read()

    return parse


def _by_channel(frames: np.ndarray) -> np.ndarray:
    """The same mean, one channel column at a time."""
    mono = frames[:, 0].copy()
    for channel in range(1, frames.shape[1]):
        mono += frames[:, channel]
    mono *= np.float32(1 / frames.shape[1])
    return mono


def _row(f: AudioFile, segmenter) -> dict:
    """Every step's cost for one recording."""
    import soundfile
    import soxr

    from app import audio, formats

    samples = audio.decode(f.data, max_seconds=600, ffmpeg_timeout=60)
    info = soundfile.info(io.BytesIO(f.data))
    row = {"file": f.name, "audio_s": round(len(samples) / audio.SAMPLE_RATE, 2),
           "source": f"{info.samplerate // 1000} kHz, {info.channels} ch",
           "multipart_ms": _ms(_multipart(f)),
           "decode_ms": _ms(lambda: audio.decode(f.data, max_seconds=600, ffmpeg_timeout=60))}
    raw = soundfile.read(io.BytesIO(f.data), dtype="float32", always_2d=True)[0]
    stereo = raw.shape[1] > 1
    mono = raw.mean(axis=1, dtype=np.float32) if stereo else raw[:, 0]
    # app/audio.py downmixes with mean(axis=1): a reduction over a 2-wide axis, slow in numpy.
    row["downmix_ms"] = _ms(lambda: raw.mean(axis=1, dtype=np.float32)) if stereo else 0.0
    row["downmix_by_channel_ms"] = _ms(lambda: _by_channel(raw)) if stereo else 0.0
    resampled = info.samplerate != audio.SAMPLE_RATE
    row["resample_ms"] = _ms(lambda: soxr.resample(mono, info.samplerate, audio.SAMPLE_RATE,
                                                   quality="HQ")) if resampled else 0.0
    row["finite_checks_ms"] = _ms(lambda: np.isfinite(samples).all(), 20)
    row["vad_ms"] = _ms(lambda: segmenter.split(samples), 3)
    segments = segmenter.split(samples)
    texts = [formats.SegmentText(s.start, s.end, "the quick brown fox jumps over the lazy dog")
             for s in segments]
    row["segments"] = len(segments)
    row["body_ms"] = _ms(lambda: json.dumps({"data": formats.to_srt(texts), "text": formats.to_text(texts),
                                             "segments": [t.as_dict() for t in texts]}), 20)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


def step_costs(files: list[AudioFile]) -> dict:
    from app import vad

    segmenter = vad.Segmenter(30.0, 0.1)
    segmenter.load()
    rows = [_row(f, segmenter) for f in files]
    audio_total = sum(r["audio_s"] for r in rows)
    keys = ("multipart_ms", "decode_ms", "downmix_ms", "downmix_by_channel_ms", "resample_ms",
            "finite_checks_ms", "vad_ms", "body_ms")
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 2) for k in keys}
    return {"rows": rows, "mean_per_request": mean,
            "vad_ms_per_audio_s": round(sum(r["vad_ms"] for r in rows) / audio_total, 2)}
