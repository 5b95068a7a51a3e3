"""Fan-out: one long recording through the fleet, two workers against one.

One fleet of two CPU instances (one core each: ASR_CPU_THREADS=1 from the
fleet's core budget), resized with `fleet.py scale` between rounds; each
round sends the same recording once to /asr and times the answer. With two
workers the recording's segments are spread over both through the job
store (app/jobs/); the figure is the wall-time ratio, one worker / two.
"""

from __future__ import annotations

import io
import sys
import time

import numpy as np
import requests
import soundfile

from .env import DEFAULT_AUDIO, engine_settings, wait_quiet
from .stats import RATIO, band, headline, times

CLIPS = ["sense_and_sensibility_01_austen_64kb-0870.wav", "sense_and_sensibility_01_austen_64kb-0880.wav",
         "sense_and_sensibility_01_austen_64kb-0890.wav", "jfk.flac"]


def recording(seconds: float) -> bytes:
    """The LibriVox sentences and JFK back to back, 0.7 s apart, repeated to
    about `seconds`, as 16 kHz FLAC (what a client would upload)."""
    from app import audio

    gap = np.zeros(int(0.7 * audio.SAMPLE_RATE), np.float32)
    parts = [p for name in CLIPS for p in (audio.decode((DEFAULT_AUDIO / name).read_bytes(), max_seconds=60,
                                                        ffmpeg_timeout=30), gap)]
    one = np.concatenate(parts)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.tile(one, max(1, round(seconds * audio.SAMPLE_RATE / len(one)))),
                    audio.SAMPLE_RATE, format="FLAC")
    return buffer.getvalue()


def _post(url: str, data: bytes) -> dict:
    started = time.monotonic()
    response = requests.post(url + "/asr", files={"file": ("long.flac", data)}, data={"lang": "en"}, timeout=3600)
    wall = time.monotonic() - started
    response.raise_for_status()
    body = response.json()
    return {"wall_s": round(wall, 1), "duration_s": body["duration"], "segments": body["stats"]["total_segments"],
            "failed": body["stats"]["failed_segments"], "speed_x": round(body["duration"] / wall, 2)}


def fanout(lab, opts) -> dict:
    minutes = 15 if opts.quick else 60
    data = recording(minutes * 60)
    fleet = lab.fleet("fanout", pool=2, size=2, balancing="round_robin", **engine_settings(opts.engine))
    rounds: dict[str, list[dict]] = {"1 worker": [], "2 workers": []}
    for r in range(opts.rounds):
        order = list(rounds) if r % 2 == 0 else list(rounds)[::-1]
        for name in order:
            fleet.scale(int(name[0]))
            wait_quiet()
            row = _post(fleet.url, data)
            print(f"bench:   round {r + 1} {name}: {row['wall_s']} s for {row['duration_s']:.0f} s of audio "
                  f"({row['speed_x']}x real time)", file=sys.stderr, flush=True)
            rounds[name].append(row)
    lab.release(fleet)
    table = {name: {"wall_s": round(sum(r["wall_s"] for r in rows) / len(rows), 1),
                    "speed_x": round(sum(r["speed_x"] for r in rows) / len(rows), 2),
                    "segments": rows[0]["segments"], "failed": sum(r["failed"] for r in rows),
                    "per_round_s": [r["wall_s"] for r in rows]} for name, rows in rounds.items()}
    speedup = round(table["1 worker"]["wall_s"] / table["2 workers"]["wall_s"], 2)
    result = {"name": "fanout", "table": table, "speedup": speedup, "minutes": minutes, "engine": opts.engine,
              "fleet_toml": fleet.toml}
    return {**result, "speedup_band": speedup_band(result)}


def round_speedups(r: dict) -> list[float]:
    """One worker's wall time over two workers', round by round (the rounds
    alternate which setup goes first, so each pair saw the same machine)."""
    one, two = (r["table"][name]["per_round_s"] for name in ("1 worker", "2 workers"))
    return [round(a / b, 2) for a, b in zip(one, two)]


def speedup_band(r: dict) -> dict | None:
    """The speed-up's band over the rounds; figures stored before it was kept have their
    per-round wall times, so it is worked out from those."""
    return r.get("speedup_band") or band(round_speedups(r), RATIO, digits=2)


def render(r: dict) -> str:
    """The section of docs/benchmarks.md (bench.doc.SECTIONS)."""
    per_round = round_speedups(r)
    speedup = headline(times(r["speedup"]), speedup_band(r), times, RATIO, what="Speed-up with 2 workers")
    rows = [f"| {name} | {x['wall_s']:.1f} | {x['speed_x']:.2f}x | {x['segments']} | {x['failed']} | "
            f"{', '.join(map(str, x['per_round_s']))} |" for name, x in r["table"].items()]
    setup = (f"A {r['minutes']}-minute recording (the LibriVox sentences and JFK repeated) sent once per "
             f"round to `/asr` of one fleet ({r['engine']}, every instance one core), at 1 and then 2 active "
             f"instances. {speedup} (target: at least 1.6x); rounds: "
             f"{', '.join(times(x) for x in per_round)}.\n")
    header = "| workers | wall s | real time | segments | failed | rounds (wall s) |\n|---|---|---|---|---|---|"
    return "\n".join([setup, header, *rows, ""])
