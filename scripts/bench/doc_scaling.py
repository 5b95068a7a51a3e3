"""Section 2 of docs/benchmarks.md: the fleet's speed-up from 1 to N instances, read
against what the machine gives N copies of the model alone (bench/ceiling.py)."""

from __future__ import annotations

import tomllib

from . import http as http_bench
from .doc_sections import band_cell, round_figures, table_bands
from .markdown import details, number, signed_percent, table
from .stats import RATIO, cell, headline, times

GOAL = 1.85  # issue 10: 2 instances against 1 on a 2-core machine


def _largest(part: dict) -> tuple[str, dict, dict | None]:
    """A scaling table's largest size (the fleet's, or the ceiling's): its name, row and speed-up band."""
    last, x = list(part["table"].items())[-1]
    return last, x, table_bands(part, http_bench.scaling_bands, "speedup_band")[last]


def _has_goal(size: str) -> bool:
    return size.startswith("2 ")  # the goal is for 2 instances against 1 (a 2-core machine)


def _cores_busy(x: dict) -> float:
    return x["audio_s_per_s"] * x["cpu_per_audio_s"]


def summary_rows(r: dict) -> list[list[str]]:
    """The Summary's rows: the fleet's speed-up at its largest size, and the machine's ceiling."""
    rows = []
    if len(r.get("table", {})) > 1:
        last, x, band = _largest(r)
        rows.append([f"scaling, {last} vs 1 instance", cell(times(x["speedup"]), band, times, RATIO),
                     f"at least {GOAL:.2f}x" if _has_goal(last) else ""])
    if len(r.get("ceiling", {}).get("table", {})) > 1:
        last, x, band = _largest(r["ceiling"])
        rows.append([f"the machine's ceiling: the pipeline alone, {last} vs 1",
                     cell(times(x["speedup"]), band, times, RATIO), ""])
    return rows


def render(r: dict) -> str:
    bands = table_bands(r, http_bench.scaling_bands, "speedup_band")
    rows = [[name, number(x["audio_s_per_s"], 3), number(x["req_per_s"], 3), times(x["speedup"]),
             band_cell(bands.get(name), times, RATIO) if i else "",
             number(x["p50_ms"], 0), number(x["p95_ms"], 0), number(x["cpu_per_audio_s"], 3), round_figures(x),
             number(x["foreign_cores"])] for i, (name, x) in enumerate(r["table"].items())]
    balancing = tomllib.loads(r["fleet_toml"]).get("balancing", "round_robin")
    setup = (f"One fleet ({r['engine']}, `balancing = \"{balancing}\"`), resized with `fleet.py scale N` "
             f"between rounds, under the same offered load: {r['concurrency']} users, each sending {r['per_user']} recordings of the mixed set. The "
             f"per-round speed-up divides round r of N instances by round r of one.\n")
    header = ["instances", "audio s/s", "req/s", "vs 1 instance",
              "vs 1 instance per round (min / median / max)", "p50 ms", "p95 ms", "CPU s per audio s",
              "rounds (audio s/s)", "other tenants, cores"]
    parts = [setup, table(header, rows)]
    if len(r["table"]) > 1:
        last, x, band = _largest(r)
        parts.append(headline(times(x["speedup"]), band, times, RATIO, f"{last} vs 1 instance") + "\n")
        parts.append(ceiling(r, band))
    return "\n".join([*parts, details("fleet file used", r["fleet_toml"], "toml")])


def ceiling(r: dict, fleet_band: dict | None) -> str:
    """The ceiling's table and what it says of the fleet's speed-up; "" for results stored without it."""
    c = r.get("ceiling")
    if not c or len(c["table"]) < 2 or len(r["table"]) < 2:
        return ""
    bands = table_bands(c, http_bench.scaling_bands, "speedup_band")
    rows = [[name, number(x["audio_s_per_s"], 3), times(x["speedup"]),
             band_cell(bands.get(name), times, RATIO) if i else "", number(x["cpu_per_audio_s"], 3),
             number(_cores_busy(x), 2), round_figures(x), number(x["foreign_cores"])]
            for i, (name, x) in enumerate(c["table"].items())]
    sizes, fleet_sizes = list(c["table"].items()), list(r["table"].values())
    (one, first), (last, most) = sizes[0], sizes[-1]
    fleet_one, fleet_most = fleet_sizes[0], fleet_sizes[-1]
    copies = last.split()[0]
    intro = (f"**What the machine gives {copies} copies of the model.** {copies} instances compute the same "
             f"model on the same cores as {copies} copies of it alone, so what the copies reach side by side is "
             f"the machine's part of the speed-up, whatever the fleet does. In the same alternating rounds "
             f"(the fleet up but idle), `scripts/bench/ceiling.py` ran the worker's own pipeline "
             f"(`app.service.Transcriber`: decode, VAD, batcher, {r['engine']} on one thread, as each CPU "
             f"instance has) in {one} and in {last} at once, each transcribing the mixed set {c['repeats']} "
             f"time(s), one recording after another: no HTTP, no Nginx, no load generator. Cores busy is "
             f"audio s/s times CPU s per audio s.\n")
    header = ["copies", "audio s/s", f"vs {one}", f"vs {one} per round (min / median / max)",
              "CPU s per audio s", "cores busy", "rounds (audio s/s)", "other tenants, cores"]
    lines = [intro, table(header, rows),
             headline(times(most["speedup"]), bands.get(last), times, RATIO, f"{last} vs {one}") + "\n"]
    fleet_speedup, machine = fleet_most["speedup"], most["speedup"]
    verdict = (f"The fleet's speed-up is {fleet_speedup / machine:.0%} of the machine's ceiling "
               f"({times(fleet_speedup)} against {times(machine)}).")
    if _has_goal(last):
        verdict += " " + _against_goal(fleet_speedup, fleet_band, machine, _why(first, most, fleet_one, fleet_most))
    return "\n".join([*lines, verdict + "\n"])


def _why(first: dict, most: dict, fleet_one: dict, fleet_most: dict) -> str:
    """Where two copies lose against twice one: CPU per audio second, and cores left idle."""
    alone = most["cpu_per_audio_s"] / first["cpu_per_audio_s"] - 1
    fleet = fleet_most["cpu_per_audio_s"] / fleet_one["cpu_per_audio_s"] - 1
    cores = (f"Cores busy: {_cores_busy(first):.2f} for one copy, {_cores_busy(most):.2f} for two; the fleet "
             f"{_cores_busy(fleet_one):.2f} and {_cores_busy(fleet_most):.2f}.")
    if alone <= 0:
        return f"{cores} CPU per audio second does not rise with two copies ({signed_percent(alone)})."
    return (f"{cores} The same work costs more CPU when both cores compute: CPU per audio second is "
            f"{signed_percent(alone)} from one copy to two ({signed_percent(fleet)} from one instance to two, "
            f"a figure that also counts Nginx, the poller and the load generator), as the copies share what "
            f"the model streams through (caches, memory bandwidth) and, on a virtual machine, physical cores "
            f"the host may share with other guests.")


def _against_goal(fleet_speedup: float, fleet_band: dict | None, machine: float, why: str) -> str:
    if fleet_speedup >= GOAL:
        below = [x for x in (fleet_band or {}).get("per_round", []) if x < GOAL]
        rounds = f"; {len(below)} of {fleet_band['rounds']} rounds fell below it" if below else ""
        return f"Pooled, it meets the goal of at least {GOAL:.2f}x{rounds}."
    if machine < GOAL:
        return (f"**The goal of at least {GOAL:.2f}x is above this machine's own ceiling**: two copies of the "
                f"model alone reach {times(machine)}. {why}")
    return (f"The fleet misses the goal of at least {GOAL:.2f}x where the machine does not: the shortfall "
            f"is the fleet's own.")
