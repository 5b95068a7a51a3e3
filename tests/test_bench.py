"""The benchmark tool's command line and document, without measuring anything (make bench does that)."""

from __future__ import annotations

import json
import sys

import pytest
from machine import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench import cli as bench
from bench import doc as bench_doc

pytestmark = pytest.mark.unit

SECTIONS = ["## 1. Stack overhead", "## 2. Scaling", "## 3. Batching", "## 4. Balancing",
            "## 5. Engines: real-time factor per core", "## Profile", "## GPU"]


def test_only_takes_known_benchmarks_and_quick_means_one_round():
    args = bench.parse_args(["--only", "overhead,batching", "--quick"])
    assert args.only == ["overhead", "batching"] and args.rounds == 1
    assert bench.parse_args([]).rounds == 5 and args.nproc >= 1
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "overhead,nope"])


def test_a_document_with_nothing_measured_says_how_to_measure_each_part():
    machine = {"nproc": 2, "cpu": "test CPU", "memory_gb": 1.0, "python": "3", "os": "linux", "date": "today"}
    text = bench_doc.render({}, machine, "make bench", 60)
    assert all(section in text for section in SECTIONS)
    assert 'make bench ARGS="--only batching"' in text and "2 CPUs (test CPU)" in text


def test_render_only_rewrites_the_committed_document_from_its_figures(tmp_path):
    stored = REPO / "docs" / "benchmarks.json"
    if not stored.exists():
        pytest.skip("no stored benchmark figures")
    (tmp_path / "b.json").write_text(stored.read_text())
    assert bench.main(["--render-only", "--out", str(tmp_path / "b.md")]) == 0
    text = (tmp_path / "b.md").read_text()
    assert all(section in text for section in SECTIONS)
    results = json.loads(stored.read_text())["results"]
    if "overhead" in results and "stack_cost" in results["overhead"]:
        assert f"{results['overhead']['stack_cost'] * 100:.1f}% of throughput" in text
