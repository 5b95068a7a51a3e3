"""Markdown pieces for docs/benchmarks.md: numbers, tables, folded blocks."""

from __future__ import annotations


def number(value, digits: int = 2, unit: str = "") -> str:
    """A figure with thousands separators; n/a for a figure not measured."""
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def signed_percent(value) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f}%"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def details(summary: str, text: str, lang: str) -> str:
    """A block folded under `summary` (a config file the run used)."""
    return f"<details><summary>{summary}</summary>\n\n```{lang}\n{text.strip()}\n```\n</details>\n"
