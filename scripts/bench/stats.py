"""Per-round bands: how far a comparison's pooled figure can be trusted.

The benchmarks run two setups in alternating rounds (A B, B A, A B ...), so
round r of A and round r of B saw the same machine. One figure per pair of
rounds (a ratio, a gain, a cost) and the min, median and max of those figures
make the band. A band that straddles "no difference" (1.0 for a ratio, 0 for
a gain or a cost) is no measurable difference, whatever the pooled figure
says; so is a single round, which has no band at all.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

NO_DIFFERENCE = "no measurable difference"
RATIO, GAIN = 1.0, 0.0  # "no difference" for a ratio, and for a gain or a cost


def times(value: float) -> str:
    """A ratio as the document writes it: 1.23x."""
    return f"{value:.2f}x"


def percent(value: float) -> str:
    """A gain or a cost as the document writes it: +4.1%."""
    return f"{value * 100:+.1f}%"


def paired(a: list, b: list, per_pair: Callable) -> list[float]:
    """per_pair(a[r], b[r]) for every round r both setups ran; a pair it cannot
    compare (it returns None, or divides by zero) is left out."""
    values = []
    for x, y in zip(a, b):
        try:
            value = per_pair(x, y)
        except (ZeroDivisionError, TypeError):  # a round with no throughput, or a missing figure
            value = None
        if value is not None:
            values.append(value)
    return values


def band(values: list[float], null: float = GAIN, digits: int = 4) -> dict | None:
    """The per-round figures with their min, median and max; measurable only when
    there are at least two rounds and the band lies wholly on one side of `null`.
    None without any round to compare."""
    if not values:
        return None
    def rounded(value: float) -> float:
        return round(value, digits) + 0.0  # + 0.0: a rounding error's -0.0 would print as "-0.0%"

    low, high = min(values), max(values)
    return {"per_round": [rounded(v) for v in values], "min": rounded(low),
            "median": rounded(statistics.median(values)), "max": rounded(high),
            "rounds": len(values), "measurable": len(values) > 1 and not (low <= null <= high)}


def measurable(b: dict, null: float) -> bool:
    """Whether a stored band tells a difference (bands stored before "measurable" was
    recorded are judged by their min and max)."""
    return b["measurable"] if "measurable" in b else not (b["min"] <= null <= b["max"])


def reason(b: dict, fmt: Callable[[float], str], null: float) -> str:
    """Why a band tells no difference."""
    if b.get("rounds", 2) < 2:  # bands stored before "rounds" was recorded came from several rounds
        return "one round, so no band"
    return f"the band includes {'zero' if null == 0 else fmt(null)}"


def _spread(b: dict, fmt: Callable[[float], str]) -> str:
    return f"per round: min {fmt(b['min'])}, median {fmt(b['median'])}, max {fmt(b['max'])}"


def per_round(b: dict, fmt: Callable[[float], str], null: float) -> str:
    """"per round: min X, median Y, max Z", and the verdict when the band tells no difference."""
    text = _spread(b, fmt)
    return text if measurable(b, null) else f"{text}; {reason(b, fmt, null)}: {NO_DIFFERENCE}"


def headline(pooled: str, b: dict | None, fmt: Callable[[float], str], null: float, what: str = "") -> str:
    """A figure in bold, "what: " first if given: the pooled value when the rounds agree on a
    side of `null`, else "no measurable difference" with the pooled value only in brackets."""
    lead = f"{what}: " if what else ""
    if b is None:  # figures stored before the rounds' band was kept
        return f"**{lead}{pooled}**"
    if measurable(b, null):
        return f"**{lead}{pooled}** ({per_round(b, fmt, null)})"
    return f"**{lead}{NO_DIFFERENCE}** (pooled {pooled}; {_spread(b, fmt)}; {reason(b, fmt, null)})"


def cell(pooled: str, b: dict | None, fmt: Callable[[float], str], null: float) -> str:
    """A Summary row's figure: pooled, the rounds' median and band, and the verdict."""
    if b is None:
        return pooled
    text = f"{pooled}; per round median {fmt(b['median'])} ({fmt(b['min'])} to {fmt(b['max'])})"
    return text if measurable(b, null) else f"{text} ({NO_DIFFERENCE})"
