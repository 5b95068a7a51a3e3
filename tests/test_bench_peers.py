"""The `peers` benchmark's judgement, without measuring anything (make bench
does that): per-round ratio bands, the goal verdicts that must say plainly
where we fall short, the Whisper answer check, and the rendered section and
Summary rows, every figure taken from the result."""

from __future__ import annotations

import sys

import pytest
from machine import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench import doc as bench_doc
from bench import doc_peers, peers

pytestmark = pytest.mark.unit


def test_ratio_band_straddling_one_is_no_measurable_difference():
    clear = peers.ratios([(3.0, 2.0), (3.3, 2.0), (2.8, 2.0)], (9.1, 6.0))
    assert clear["pooled"] == round(9.1 / 6.0, 3) and clear["min"] == 1.4 and clear["max"] == 1.65
    assert clear["median"] == 1.5 and clear["measurable"] is True
    assert peers.ratios([(2.1, 2.0), (1.9, 2.0)], (4.0, 4.0))["measurable"] is False
    assert peers.ratios([(3.0, 2.0)], (3.0, 2.0))["measurable"] is False  # one round: no band
    assert peers.ratios([(None, 2.0)], (None, 2.0)) is None  # a side answered nothing


def test_verdicts_say_plainly_when_we_fall_short():
    met = doc_peers.verdict("throughput", peers.ratios([(1.6, 1.0), (1.8, 1.0)], (3.4, 2.0)), 1.5)
    assert "meets the goal of at least 1.5x" in met and "fall short" not in met
    slower = doc_peers.verdict("throughput", peers.ratios([(0.6, 1.0), (0.7, 1.0)], (1.3, 2.0)), 1.5)
    assert "**we fall short of the goal of at least 1.5x**: the peer is faster" in slower
    assert "**0.65x**" in slower
    noise = doc_peers.verdict("p95", peers.ratios([(0.9, 1.0), (1.2, 1.0)], (2.1, 2.0)), 0.7)
    assert "**we fall short of the goal of at most 0.7x**: no measurable difference from the peer" in noise
    assert "the band includes 1.00x" in noise
    single = doc_peers.verdict("throughput", peers.ratios([(0.6, 1.0)], (0.6, 1.0)), 1.5)
    assert "fall short" in single and "no measurable difference from the peer (one round, so no band)" in single
    short = doc_peers.verdict("p95", peers.ratios([(0.8, 1.0), (0.9, 1.0)], (1.7, 2.0)), 0.7)
    assert "better than the peer, not by enough" in short


def test_whisper_answers_are_checked_against_the_references():
    jfk = "And so, my fellow Americans: ask not what your country can do for you, ask what you can do for your country."
    good = peers.check_answers([("jfk.flac", jfk),
                                ("sense_and_sensibility_01_austen_64kb-0880.wav", "He was not an ill-disposed young man.")],
                               "wer")
    assert good == {"answers": 2, "empty": 0, "wer": 0.0, "jfk_wer": 0.0, "real_text": True}
    noise = peers.check_answers([("jfk.flac", "la la la"), ("jfk.flac", "")], "wer")
    assert noise["empty"] == 1 and noise["jfk_wer"] > 0.9 and noise["real_text"] is False
    assert peers.check_answers([("jfk.flac", "zx")], "status") == {"answers": 1, "empty": 0}


def _side(throughput: float, p95: float, rounds: int) -> dict:
    return {"audio_s_per_s": throughput, "req_per_s": throughput / 6, "p50_ms": p95 / 2, "p95_ms": p95,
            "per_round": [throughput] * rounds, "per_round_p95_ms": [p95] * rounds, "cores_busy": 1.9,
            "requests": 8 * rounds, "failed": 0, "retries": 3, "foreign_cores": 0.05}


def _result(ours: tuple, peer: tuple, rounds: int = 2) -> dict:
    table = {}
    for users in ("8", "1"):
        sides = {"ours": _side(*ours, rounds), "peer": _side(*peer, rounds)}
        table[users] = {**sides, "requests_per_round": 8,
                        "throughput": peers.ratios([(ours[0], peer[0])] * rounds, (ours[0], peer[0])),
                        "p95": peers.ratios([(ours[1], peer[1])] * rounds, (ours[1], peer[1]))}
    runs = {peers.setup_name(side, users): [{"errors": []}] * rounds for side in ("ours", "peer") for users in (8, 1)}
    peer_result = {"label": "faster-whisper-server", "engine": "whisper-base", "threads": 1, "workers": 2,
                   "versions": {"faster-whisper-server": "0.0.3"}, "command": "python -m faster_whisper_server",
                   "config_text": "batch_size: 1\n", "table": table, "check": "wer", "ours": peers.OURS,
                   "answers": {side: {"answers": 32, "empty": 0, "wer": 0.02, "jfk_wer": 0.0, "real_text": True}
                               for side in ("ours", "peer")}, "fleet_toml": "instances = 2", "runs": runs}
    return {"files": ["jfk.flac (11.0 s)"], "goals": peers.GOALS, "goal_users": 8, "max_wer": peers.MAX_WER,
            "peers": {"faster_whisper_server": peer_result,
                      "funasr_server": {"label": "FunASR server", "skipped": "RuntimeError: pip failed"}}}


def test_rendered_section_takes_every_figure_from_the_result_and_says_where_we_fall_short():
    text = doc_peers.render(_result(ours=(12.34, 4100.0), peer=(9.87, 5700.0)))
    assert "| 8 | ours (fleet) | 12.340 |" in text and "| 8 | peer | 9.870 |" in text
    assert f"**{12.34 / 9.87:.2f}x**" in text and f"**{4100 / 5700:.2f}x**" in text
    assert "**we fall short of the goal of at least 1.5x**: better than the peer, not by enough" in text
    assert "**we fall short of the goal of at most 0.7x**" in text
    assert "not speaches" in text and "2 worker processes of 1 thread(s)" in text
    assert "word error rate 2.0%" in text and "Not measured: RuntimeError: pip failed" in text
    # Why, from the same rounds: both sides 1.9 cores busy; 1.5x the peer's 9.87 audio s/s on 2 cores
    # needs 2 / 14.805 CPU s per audio second, against ours 1.9 / 12.34.
    assert (f"CPU seconds per audio second: ours {1.9 / 12.34:.3f}, the peer's {1.9 / 9.87:.3f}. Even with all "
            f"2 cores busy, 1.5x would need ours at {2 / (1.5 * 9.87):.3f}, "
            f"{1 - (2 / (1.5 * 9.87)) / (1.9 / 12.34):.0%} less than now") in text
    assert "`whisper-base` worker shows how much of ours is the model call" in text
    rows = doc_peers.summary_rows(_result(ours=(20.0, 1000.0), peer=(10.0, 2000.0)))
    assert rows == [["vs faster-whisper-server, 8 users: throughput ours/peer", "2.00x (rounds 2.00x to 2.00x)",
                     "at least 1.5x"],
                    ["vs faster-whisper-server, 8 users: p95 ours/peer", "0.50x (rounds 0.50x to 0.50x)",
                     "at most 0.7x"]]


def test_the_benchmark_document_has_the_section_and_its_summary_rows():
    machine = {"nproc": 2, "cpu": "test CPU", "memory_gb": 1.0, "python": "3", "os": "linux", "date": "today",
               "gpus": []}
    result = _result(ours=(6.0, 9000.0), peer=(9.0, 6000.0), rounds=1)
    result.update(command="make bench", quick=True, rounds=1, machine=machine, seconds=120.0)
    text = bench_doc.render({"peers": result}, machine, "make bench", 120)
    assert "## 9. Against other servers" in text
    assert ("| vs faster-whisper-server, 8 users: throughput ours/peer | 0.67x (rounds 0.67x to 0.67x) "
            "(one round, so no band: no measurable difference) | at least 1.5x |") in text
    assert "**we fall short of the goal of at least 1.5x**: no measurable difference from the peer" in text
