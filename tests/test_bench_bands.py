"""The benchmarks' per-round bands (scripts/bench/stats.py) and how docs/benchmarks.md
reports them, without measuring anything: rounds built with the benchmarks' own row
and pooling code are rendered by the real document code.

Proves: a figure is worked out per pair of rounds (round r of A against round r of
B); its band (min, median, max) is measurable only when it lies wholly on one side
of no difference (1.0 for a ratio, 0 for a gain or a cost) over at least two rounds;
the overhead, scaling, batching and balancing sections and the Summary give each
ratio its pooled value, its band and, when the band straddles, "no measurable
difference" instead of a gain or a loss; the balancing verdict names the better
balancing only when every round agrees; figures stored before the bands were kept
get the same bands from their stored rounds, and figures without rounds still render
with no verdict claimed.
"""

from __future__ import annotations

import sys

import pytest
from machine import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench import doc, http, models, stats
from bench.http import pooled
from bench.inprocess import compact

pytestmark = pytest.mark.unit

MACHINE = {"nproc": 2, "cpu": "test CPU", "memory_gb": 1.0, "python": "3", "os": "linux", "date": "today"}
HOW = {"command": "make bench", "quick": False, "rounds": 2, "seconds": 60.0, "machine": MACHINE}


def row(throughput: float, p95_ms: float = 1000.0, cpu_s: float = 5.0) -> dict:
    """One round as a benchmark stores it (bench.inprocess.compact): 10 s of wall time."""
    return compact(sent=10, ok=10, elapsed=10.0, audio=throughput * 10, cpu=(cpu_s, 0.0), errors=[],
                   latency_ms={"p50": p95_ms / 2, "p95": p95_ms, "max": p95_ms},
                   cpu_by_kind={"gunicorn worker (Flask app)": cpu_s})


def results(with_bands: bool = True, least_conn_p95: tuple = (800.0, 900.0)) -> dict:
    """The four benchmarks' results over two rounds, with bands as the benchmarks store them
    now, or without (the shape stored before the bands were kept: the rounds only)."""
    overhead_runs = {"fleet": [row(9.0), row(11.0)], "in-process": [row(10.0), row(10.0)]}
    fleet, local = pooled(overhead_runs["fleet"]), pooled(overhead_runs["in-process"])
    overhead = {"name": "overhead", "http": fleet, "in_process": local,
                "stack_cost": round(1 - fleet["audio_s_per_s"] / local["audio_s_per_s"], 4),
                "stack_cpu_share": 0.02, "cpu_cost": 0.05, "engine": "pocketsphinx", "concurrency": 4,
                "per_user": 3, "files": ["a.wav"], "fleet_toml": "", "runs": overhead_runs, **HOW}
    scaling_runs = {"1 instance": [row(4.0), row(5.0)], "2 instances": [row(7.2), row(9.5)]}
    scaling = {"name": "scaling", "table": {name: pooled(rows) for name, rows in scaling_runs.items()},
               "engine": "pocketsphinx", "concurrency": 8, "per_user": 2, "fleet_toml": "",
               "runs": scaling_runs, **HOW}
    for x in scaling["table"].values():
        x["speedup"] = round(x["audio_s_per_s"] / scaling["table"]["1 instance"]["audio_s_per_s"], 3)
    # 1 user: on beats off by 10% and 20%; 8 users: +5% and -5%, a band across zero.
    batching_runs = {1: {"on": [row(11.0), row(12.0)], "off": [row(10.0), row(10.0)]},
                     8: {"on": [row(10.5), row(9.5)], "off": [row(10.0), row(10.0)]}}
    batching = {"name": "batching", "table": {}, "engine_env": {"ASR_ENGINE": "pocketsphinx"},
                "files": ["a.wav"], "requests_per_run": 8, "runs": batching_runs, **HOW}
    for c, got in batching_runs.items():
        on, off = pooled(got["on"]), pooled(got["off"])
        batching["table"][c] = {"on": on, "off": off, "mean_batch": None,
                                "gain": round(on["audio_s_per_s"] / off["audio_s_per_s"] - 1, 4)}
    balancing_runs = {"round_robin": [row(5.0, 1000.0), row(5.0, 1000.0)],
                      "least_conn": [row(5.5, least_conn_p95[0]), row(4.5, least_conn_p95[1])]}
    table = {name: pooled(rows) for name, rows in balancing_runs.items()}
    balancing = {"name": "balancing", "table": table, "engine": "pocketsphinx", "concurrency": 4, "per_user": 3,
                 "files": ["a.wav (1.0 s)"], "fleet_toml": "", "runs": balancing_runs, **HOW,
                 "p95_ratio": round(table["least_conn"]["p95_ms"] / table["round_robin"]["p95_ms"], 4),
                 "throughput_ratio": round(table["least_conn"]["audio_s_per_s"]
                                           / table["round_robin"]["audio_s_per_s"], 4)}
    if with_bands:  # what the benchmarks add to their results before storing them
        overhead.update(http.overhead_bands(overhead))
        balancing.update(http.balancing_bands(balancing))
        for name, speedup_band in http.scaling_bands(scaling).items():
            scaling["table"][name]["speedup_band"] = speedup_band
        for c, gain_band in models.batching_bands(batching).items():
            batching["table"][c]["gain_band"] = gain_band
    return {"overhead": overhead, "scaling": scaling, "batching": batching, "balancing": balancing}


def test_a_band_is_measurable_only_wholly_on_one_side_of_no_difference_over_two_rounds():
    pairs = stats.paired([11.0, 12.0, 0.0], [10.0, 10.0, 0.0], lambda a, b: a / b - 1)
    assert pairs == pytest.approx([0.1, 0.2])  # the round with no throughput is left out, not a crash
    gain = stats.band(pairs, stats.GAIN)
    assert gain == {"per_round": [0.1, 0.2], "min": 0.1, "median": 0.15, "max": 0.2, "rounds": 2,
                    "measurable": True}
    assert not stats.band([0.95, 1.2, 1.1], stats.RATIO)["measurable"]  # straddles 1.0
    assert stats.band([0.95, 0.97], stats.RATIO)["measurable"]
    assert not stats.band([0.5], stats.GAIN)["measurable"]  # one round: no band at all
    assert stats.band([], stats.GAIN) is None
    single = stats.headline("+50.0%", stats.band([0.5], stats.GAIN), stats.percent, stats.GAIN, "gain")
    assert single.startswith("**gain: no measurable difference** (pooled +50.0%") and "one round" in single


def test_every_ratio_comes_with_its_band_and_a_band_across_no_difference_is_no_difference():
    text = doc.render(results(), MACHINE, "make bench", 60)
    section = {name: text.split(f"## {title}")[1].split("\n## ")[0] for name, title, _ in doc.SECTIONS}
    # Overhead: fleet 9 then 11 audio s/s against 10 and 10: costs +10% and -10%.
    assert ("**Stack cost: no measurable difference** (pooled 0.0% of throughput; per round: min -10.0%, "
            "median 0.0%, max 10.0%; the band includes zero)") in section["overhead"]
    # Scaling: 7.2/4 and 9.5/5, in a column and in a line of its own.
    assert "| 1.80x / 1.85x / 1.90x |" in section["scaling"]
    assert "**2 instances vs 1 instance: 1.86x** (per round: min 1.80x, median 1.85x, max 1.90x)" in text
    # Batching: a gain at 1 user, none measurable at 8, whatever the pooled +0.0%.
    assert "| +10.0% / +15.0% / +20.0% |" in section["batching"]
    assert "- 1 user(s): **batching gain: +15.0%** (per round: min +10.0%, median +15.0%, max +20.0%)" in text
    assert ("- 8 user(s): **batching gain: no measurable difference** (pooled +0.0%; per round: min -5.0%, "
            "median +0.0%, max +5.0%; the band includes zero)") in text
    assert "| -5.0% / +0.0% / +5.0% (no measurable difference) |" in section["batching"]
    # Balancing: least_conn's p95 0.80x and 0.90x of round robin's, throughput 1.10x and 0.90x.
    assert ("**least_conn p95 / round robin p95: 0.80x** (per round: min 0.80x, median 0.85x, "
            "max 0.90x)") in section["balancing"]
    assert "**least_conn throughput / round robin throughput: no measurable difference**" in section["balancing"]
    assert ("**least_conn balances better here**: its p95 is lower than round robin's in every round; "
            "throughput: no measurable difference.") in section["balancing"]
    summary = text.split("## Summary")[1].split("\n## ")[0]
    for line in [("| stack cost (fleet vs in-process throughput) | 0.0%; per round median 0.0% (-10.0% to 10.0%) "
                 "(no measurable difference) | under 5% |"),
                 "| scaling, 2 instances vs 1 instance | 1.86x; per round median 1.85x (1.80x to 1.90x) | at least 1.85x |",
                 "| batching gain at 1 user(s) | +15.0%; per round median +15.0% (+10.0% to +20.0%) |  |",
                 ("| batching gain at 8 user(s) | +0.0%; per round median +0.0% (-5.0% to +5.0%) "
                 "(no measurable difference) |  |"),
                 "| p95 least_conn vs round robin | 0.80x; per round median 0.85x (0.80x to 0.90x) |  |",
                 ("| throughput least_conn vs round robin | 1.00x; per round median 1.00x (0.90x to 1.10x) "
                 "(no measurable difference) |  |")]:
        assert line in summary


def test_the_balancing_verdict_names_a_winner_only_when_every_round_agrees():
    text = doc.render(results(least_conn_p95=(1100.0, 1200.0)), MACHINE, "make bench", 60)
    assert "**round robin balances better here**: its p95 is lower than least_conn's in every round" in text
    text = doc.render(results(least_conn_p95=(800.0, 1100.0)), MACHINE, "make bench", 60)
    assert "balances better" not in text
    assert ("**least_conn p95 / round robin p95: no measurable difference** (pooled 0.80x; per round: min 0.80x, "
            "median 0.95x, max 1.10x; the band includes 1.00x)") in text
    assert "**Neither balancing is measurably better** in p95 (the band includes 1.00x)" in text
    assert "| p95 least_conn vs round robin | 0.80x; per round median 0.95x (0.80x to 1.10x) " \
           "(no measurable difference) |  |" in text


def test_figures_stored_before_the_bands_get_them_from_their_rounds_and_without_rounds_still_render():
    assert doc.render(results(with_bands=False), MACHINE, "make bench", 60) == \
        doc.render(results(), MACHINE, "make bench", 60)
    bare = results(with_bands=False)
    for r in bare.values():  # no rounds stored at all: the pooled figures alone, no verdict claimed
        del r["runs"]
    for key in ("p95_ratio", "throughput_ratio"):
        del bare["balancing"][key]
    text = doc.render(bare, MACHINE, "make bench", 60)
    assert "**Stack cost: 0.0% of throughput** (target: under 5%)" in text
    assert "| batching gain at 8 user(s) | +0.0% |  |" in text and "batching gain: " not in text
    assert "No verdict: these figures were stored without their per-round band." in text
    assert "**least_conn p95 / round robin p95: 0.80x**" in text
