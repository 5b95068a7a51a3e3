"""The benchmark tool's command line and document, without measuring anything (make bench does that)."""

from __future__ import annotations

import json
import sys

import pytest
from machine import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench import cli as bench
from bench import doc as bench_doc
from bench import profile

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


def test_profile_counts_native_compute_py_spy_cannot_sample():
    sampled = [{"what": "VAD: Silero in the handler thread", "samples": 65, "ms_per_request": 6.5, "share": 0.84},
               {"what": "engine: model call (inference thread)", "samples": 12, "ms_per_request": 1.2, "share": 0.16}]
    # CTranslate2 computes in its own OpenMP threads: 300 ms of process CPU, 7.7 ms sampled.
    buckets = profile._with_unsampled([dict(b) for b in sampled], 300.0)
    assert [(b["what"], b["ms_per_request"], b["share"]) for b in buckets] == [
        (profile.UNSAMPLED, 292.3, 0.9743), ("VAD: Silero in the handler thread", 6.5, 0.0217),
        ("engine: model call (inference thread)", 1.2, 0.004)]
    # Samples that account for the process's time are left as they are.
    assert profile._with_unsampled([dict(b) for b in sampled], 8.0) == sampled
