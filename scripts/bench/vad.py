"""VAD alone: Silero v6 as faster-whisper ships it against app/silero.py's
FFT spectrum, on the same long recording, in this process.

Each round segments the whole recording once with each session, in
alternating order, and counts this process's CPU seconds (one onnxruntime
thread, so CPU time is the time of one core, and other tenants of the
machine do not count). Speed is audio seconds per CPU second; the two
paths must give the same segments.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from .fanout import recording
from .stats import RATIO, band, headline, times


def vad(lab, opts) -> dict:
    from faster_whisper.utils import get_assets_path
    from faster_whisper.vad import SileroVADModel, get_vad_model

    from app import audio, silero
    from app import vad as app_vad

    minutes = 5 if opts.quick else 20
    samples = audio.decode(recording(minutes * 60), max_seconds=7200, ffmpeg_timeout=120)
    audio_s = len(samples) / audio.SAMPLE_RATE
    segmenter = app_vad.Segmenter(30.0, 0.1)
    segmenter.load()
    model = get_vad_model()
    if not silero.speed_up_vad():
        raise RuntimeError("app/silero.py did not take over the VAD session (see the log's warning)")
    shipped = SileroVADModel(os.path.join(get_assets_path(), "silero_vad_v6.onnx")).session
    sessions = {"as shipped": shipped, "FFT spectrum": model.session}
    speeds: dict[str, list[float]] = {name: [] for name in sessions}
    segments: dict[str, list] = {}
    for r in range(opts.rounds):
        order = list(sessions) if r % 2 == 0 else list(sessions)[::-1]
        for name in order:
            model.session = sessions[name]
            started = time.process_time()
            segments[name] = segmenter.split(samples)
            speeds[name].append(round(audio_s / (time.process_time() - started), 1))
            print(f"bench:   round {r + 1} {name}: {speeds[name][-1]} audio s per CPU second",
                  file=sys.stderr, flush=True)
    model.session = sessions["FFT spectrum"]
    ratios = [fast / slow for fast, slow in zip(speeds["FFT spectrum"], speeds["as shipped"])]
    return {"name": "vad", "minutes": minutes, "audio_s": round(audio_s, 1), "speeds": speeds,
            "ratio": band(ratios, RATIO, digits=2),
            "segments": {name: len(found) for name, found in segments.items()},
            "identical": segments["as shipped"] == segments["FFT spectrum"],
            "agreement": silero.agreement(sessions["as shipped"], sessions["FFT spectrum"])}


def render(r: dict) -> str:
    """The section of docs/benchmarks.md (bench.doc.SECTIONS)."""
    rows = [f"| {name} | {statistics.median(x):.0f} | {min(x):.0f} | {max(x):.0f} | {r['segments'][name]} |"
            for name, x in r["speeds"].items()]
    ratio = r["ratio"]
    same = ("the same segments" if r["identical"] else "**different segments**")
    ratio_text = headline(times(ratio["median"]), ratio, times, RATIO, what="median speed ratio")
    setup = (f"Silero VAD v6 on a {r['minutes']}-minute recording ({r['audio_s']:.0f} s: the LibriVox sentences "
             f"and JFK repeated), one onnxruntime thread, in CPU seconds of the benchmark process, "
             f"{len(next(iter(r['speeds'].values())))} alternating rounds. The FFT spectrum (`app/silero.py`) "
             f"against the model as faster-whisper ships it: "
             f"{ratio_text}, with {same}; "
             f"speech probabilities within {r['agreement']:.1g} of the model's.\n")
    header = ("| VAD | audio s per CPU second (median) | min | max | segments |\n"
              "|---|---|---|---|---|")
    return "\n".join([setup, header, *rows, ""])
