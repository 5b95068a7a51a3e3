"""The scaling section reads the fleet's speed-up against the machine's own ceiling
(the bare pipeline in 1 and 2 processes, bench/ceiling.py), from stored rounds: the
verdict blames the machine only when the ceiling itself is under the goal, and the
Summary carries both figures. Results stored before the ceiling was measured still
render, without it. The ceiling's processes themselves run in `make bench`."""

from __future__ import annotations

import sys

import pytest
from machine import REPO

sys.path.insert(0, str(REPO / "scripts"))
from test_bench_bands import MACHINE, results, row

from bench import doc, http

pytestmark = pytest.mark.unit


def with_ceiling(fleet: tuple, alone: tuple, cpu_rise: float = 1.1) -> dict:
    """Results whose scaling rounds give the fleet `fleet` and the bare copies `alone`
    (audio s/s of 1 and of 2, two rounds each); two copies spend `cpu_rise` times the CPU per
    audio second of one."""
    out = results()
    out["scaling"].update(http.speedups({"1 instance": [row(fleet[0][0]), row(fleet[0][1])],
                                         "2 instances": [row(fleet[1][0]), row(fleet[1][1])]}))
    out["scaling"]["ceiling"] = {"repeats": 2, **http.speedups({
        "1 process": [row(alone[0][0], cpu_s=alone[0][0]), row(alone[0][1], cpu_s=alone[0][1])],
        "2 processes": [row(alone[1][0], cpu_s=alone[1][0] * cpu_rise),
                        row(alone[1][1], cpu_s=alone[1][1] * cpu_rise)]})}
    return out


def scaling_section(out: dict) -> tuple[str, str]:
    text = doc.render(out, MACHINE, "make bench", 60)
    return text.split("## 2. Scaling")[1].split("\n## ")[0], text.split("## Summary")[1].split("\n## ")[0]


def test_a_fleet_short_of_a_goal_the_machine_cannot_reach_is_read_against_the_ceiling():
    section, summary = scaling_section(with_ceiling(fleet=((5.0, 5.0), (8.9, 8.9)), alone=((5.0, 5.0), (9.0, 9.2))))
    assert "**2 processes vs 1 process: 1.82x** (per round: min 1.80x, median 1.82x, max 1.84x)" in section
    assert ("The fleet's speed-up is 98% of the machine's ceiling (1.78x against 1.82x). **The goal of at "
            "least 1.85x is above this machine's own ceiling**: two copies of the model alone reach 1.82x.") in section
    assert "CPU per audio second is +10.0% from one copy to two (" in section
    assert "Cores busy: 0.50 for one copy, 1.00 for two; the fleet 0.50 and 0.50." in section
    assert "| scaling, 2 instances vs 1 instance | 1.78x; per round median 1.78x (1.78x to 1.78x) | at least 1.85x |" \
        in summary
    assert "| the machine's ceiling: the pipeline alone, 2 processes vs 1 | 1.82x;" in summary


def test_a_fleet_short_of_a_goal_the_machine_reaches_is_called_the_fleets_own_shortfall():
    section, _ = scaling_section(with_ceiling(fleet=((5.0, 5.0), (8.9, 8.9)), alone=((5.0, 5.0), (9.6, 9.8))))
    assert "above this machine's own ceiling" not in section
    assert ("The fleet's speed-up is 92% of the machine's ceiling (1.78x against 1.94x). The fleet misses the "
            "goal of at least 1.85x where the machine does not: the shortfall is the fleet's own.") in section


def test_a_fleet_that_meets_the_goal_pooled_says_how_many_rounds_fell_below_it():
    section, _ = scaling_section(with_ceiling(fleet=((5.0, 5.0), (9.0, 9.6)), alone=((5.0, 5.0), (9.6, 9.8))))
    assert ("The fleet's speed-up is 96% of the machine's ceiling (1.86x against 1.94x). Pooled, it meets the "
            "goal of at least 1.85x; 1 of 2 rounds fell below it.") in section


def test_a_fleet_above_the_ceiling_and_a_cpu_cost_that_falls_are_said_as_they_are():
    section, _ = scaling_section(with_ceiling(fleet=((5.0, 5.0), (9.0, 9.0)), alone=((5.0, 5.0), (8.9, 8.9)),
                                              cpu_rise=0.97))
    assert "The fleet's speed-up is 101% of the machine's ceiling (1.80x against 1.78x)." in section
    assert "CPU per audio second does not rise with two copies (-3.0%)." in section
    assert "costs more CPU" not in section


def test_no_goal_is_read_into_more_than_two_instances():
    out = with_ceiling(fleet=((5.0, 5.0), (8.9, 8.9)), alone=((5.0, 5.0), (9.0, 9.2)))
    for part in (out["scaling"], out["scaling"]["ceiling"]):
        part["table"] = {name.replace("2 ", "4 "): x for name, x in part["table"].items()}
        part["runs"] = {name.replace("2 ", "4 "): x for name, x in part["runs"].items()}
    section, summary = scaling_section(out)
    assert "The fleet's speed-up is 98% of the machine's ceiling (1.78x against 1.82x).\n" in section
    assert "goal" not in section and "| scaling, 4 instances vs 1 instance | 1.78x;" in summary
    assert "at least 1.85x" not in summary


def test_results_stored_before_the_ceiling_render_without_it():
    section, summary = scaling_section(results())
    assert "**2 instances vs 1 instance: 1.86x**" in section and "ceiling" not in section
    assert "machine's ceiling" not in summary
