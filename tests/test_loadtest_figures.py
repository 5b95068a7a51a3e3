"""The load test's figures (scripts/loadtest/) checked against what was sent:
its percentiles against numpy.percentile on known latencies; summarize()'s
latency, per-instance, error, throughput and real-time-factor figures on a
hand-made LoadResult; and a whole run_load() against a small HTTP server in
this process that answers /asr like a worker, sleeping a known time per
request, naming instances in a known 2:1 ratio (X-ASR-Worker), failing a
known few and reporting each recording's duration: every sample, share,
count, audio second and CSV row matches what the server did."""

from __future__ import annotations

import collections
import csv
import http.server
import json
import random
import re
import threading
import time

import fleet_harness  # noqa: F401 - puts scripts/ on sys.path, for the load test's package below
import numpy as np
import pytest

# isort: split
from loadtest import report, stats
from loadtest.client import Sample, request_id
from loadtest.config import AudioFile, LoadConfig
from loadtest.core import LoadResult, run_load

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("size", [1, 2, 3, 10, 101, 1000])
def test_percentile_is_numpys_linear_percentile(size):
    values = sorted(random.Random(size).lognormvariate(5, 1) for _ in range(size))
    for q in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
        assert stats.percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12, abs=1e-9)
    figures = stats.latency_stats([v / 1000 for v in values])  # seconds in, ms out
    for q in (50, 90, 95, 99):
        assert figures[f"p{q}"] == pytest.approx(np.percentile(values, q), abs=0.051)
    assert figures["count"] == size and figures["avg"] == pytest.approx(np.mean(values), abs=0.051)
    assert (figures["min"], figures["max"]) == (round(values[0], 1), round(values[-1], 1))


def sample(index, latency, worker="asr-a", error=None, status=200, audio=2.0, user=0, file="a.wav"):
    return Sample(index=index, user=user, file=file, start=index * 0.1, latency=latency, status=status,
                  error=error, worker=worker, audio_seconds=audio)


def test_summary_figures_follow_the_samples():
    rng = random.Random(7)
    latencies = [rng.uniform(0.05, 2.0) for _ in range(40)]
    samples = []
    for i, latency in enumerate(latencies):
        worker = "asr-b" if i % 4 == 3 else "asr-a"  # 30:10
        error, status = ("http_503", 503) if i % 10 == 9 else (None, 200)
        samples.append(sample(i, latency, worker, error, status, audio=1.0 + i % 3))
    samples.append(sample(40, 5.0, worker=None, error="connection", status=None, audio=None))
    result = LoadResult(config=LoadConfig(url="http://127.0.0.1:9", files=[], requests=41, concurrency=1),
                        started_at="2026-01-01T00:00:00+00:00", elapsed=20.0, samples=samples, resources=[],
                        gpus={}, warmup=[], stopped_by="requests", files=[], run_id="fixed")
    s = stats.summarize(result)
    ok = [x for x in samples if x.ok]
    assert s["requests"] == {"sent": 41, "ok": 36, "failed": 5, "success_rate": round(36 / 41, 4)}
    assert s["errors"] == {"http_503": 4, "connection": 1}
    assert s["status_codes"] == {"200": 36, "503": 4}  # a refused connection has no status
    for key, chosen in (("latency_ms", ok), ("latency_all_ms", samples)):
        ms = [x.latency * 1000 for x in chosen]
        for q in (50, 90, 95, 99):
            assert s[key][f"p{q}"] == pytest.approx(np.percentile(ms, q), abs=0.051), (key, q)
    # Shares are of answered requests (40): the connection error belongs to no instance.
    assert {n: (i["requests"], i["share"], i["ok"]) for n, i in s["instances"].items()} == \
        {"asr-a": (30, 0.75, 28), "asr-b": (10, 0.25, 8)}  # 503s at 9, 29 (a); 19, 39 (b)
    b_ok = [x.latency * 1000 for x in ok if x.worker == "asr-b"]
    assert s["instances"]["asr-b"]["latency_ms"]["p95"] == pytest.approx(np.percentile(b_ok, 95), abs=0.051)
    audio = sum(x.audio_seconds for x in ok)
    assert s["throughput"] == {"requests_per_s": round(41 / 20, 3), "ok_requests_per_s": round(36 / 20, 3),
                               "audio_seconds": round(audio, 3), "audio_seconds_per_s": round(audio / 20, 3),
                               "audio_unknown_requests": 0}
    rtf = [x.latency / x.audio_seconds for x in ok]
    assert s["request_rtf"] == {"avg": round(sum(rtf) / len(rtf), 4), "max": round(max(rtf), 4)}
    text = report.render_text(s)
    assert f"p95 {s['latency_ms']['p95']:.0f}" in text and "41 sent, 36 ok, 5 failed" in text
    assert "asr-a" in text and "75.0%" in text


DURATIONS = {"short.wav": 2.0, "long.wav": 8.0}


class FakeWorker(http.server.BaseHTTPRequestHandler):
    """POST /asr as a worker answers it. The n-th measured request (arrival
    order) sleeps 10-40 ms, is from asr-b when n % 3 == 2 (else asr-a), is a
    503 when n % 10 == 9 and a 200 with code 1 when n % 10 == 4; warm-up ones
    (their X-Request-ID says so) are plain successes from asr-warm."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        rid = self.headers["X-Request-ID"]
        name = re.search(rb'filename="([^"]+)"', body).group(1).decode()
        ok = {"code": 0, "text": "hello", "duration": DURATIONS[name]}
        with self.server.lock:
            if "warmup" in rid:
                plan = {"sleep": 0.0, "worker": "asr-warm", "status": 200, "body": ok}
            else:
                n = self.server.count
                self.server.count += 1
                status, answer = ((503, {"code": 503, "msg": "queue full"}) if n % 10 == 9 else
                                  (200, {"code": 1, "msg": "boom"}) if n % 10 == 4 else (200, ok))
                plan = {"sleep": 0.01 * (1 + n % 4), "worker": "asr-b" if n % 3 == 2 else "asr-a",
                        "status": status, "body": answer}
            self.server.plans[rid] = {**plan, "file": name}
        time.sleep(plan["sleep"])
        data = json.dumps(plan["body"]).encode()
        self.send_response(plan["status"])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-ASR-Worker", plan["worker"])
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_worker():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeWorker)
    server.daemon_threads = True
    server.lock, server.count, server.plans = threading.Lock(), 0, {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_run_against_a_known_server_reports_what_it_did(fake_worker, tmp_path):
    # long.wav's length is unknown to the client: the server's `duration` tells it.
    files = [AudioFile("short.wav", b"RIFF-short", 2.0), AudioFile("long.wav", b"RIFF-long", None)]
    config = LoadConfig(url=f"http://127.0.0.1:{fake_worker.server_address[1]}", files=files, concurrency=3,
                        requests=10, warmup=2, timeout=10, sample_interval=0.2)
    result = run_load(config)
    s = stats.summarize(result)
    plans = fake_worker.plans
    assert fake_worker.count == 30 and len(plans) == 32  # 30 measured, 2 warm-up
    assert s["warmup"] == {"sent": 2, "ok": 2} and "asr-warm" not in s["instances"]
    seen = {}
    for x in result.samples:
        plan = plans[request_id(result.run_id, x.index)]
        seen[request_id(result.run_id, x.index)] = plan
        expected_error = ("http_503" if plan["status"] == 503 else
                          "bad_response" if plan["body"]["code"] else None)
        assert (x.worker, x.status, x.error, x.file) == (plan["worker"], plan["status"], expected_error,
                                                        plan["file"])
        assert plan["sleep"] <= x.latency < plan["sleep"] + 5
        assert x.audio_seconds == DURATIONS[x.file]  # learned, even for a failed request
    assert len(seen) == 30
    assert s["requests"] == {"sent": 30, "ok": 24, "failed": 6, "success_rate": 0.8}
    assert s["errors"] == {"bad_response": 3, "http_503": 3}
    assert s["status_codes"] == {"200": 27, "503": 3}
    assert s["error_samples"]["http_503"] == '{"code": 503, "msg": "queue full"}'
    assert {n: (i["requests"], i["share"]) for n, i in s["instances"].items()} == \
        {"asr-a": (20, round(20 / 30, 4)), "asr-b": (10, round(10 / 30, 4))}
    oks = collections.Counter(p["worker"] for p in seen.values() if p["status"] == 200 and not p["body"]["code"])
    assert {n: i["ok"] for n, i in s["instances"].items()} == dict(oks)
    # Throughput: what was sent over the time it took, which is at least the
    # slowest user's sleeps end to end.
    per_user = collections.defaultdict(float)
    for x in result.samples:
        per_user[x.user] += plans[request_id(result.run_id, x.index)]["sleep"]
    assert result.elapsed >= max(per_user.values())
    assert s["throughput"]["requests_per_s"] == round(30 / result.elapsed, 3)
    ok = [x for x in result.samples if x.ok]
    audio = sum(DURATIONS[x.file] for x in ok)
    assert s["throughput"]["audio_seconds"] == pytest.approx(audio, abs=1e-3)
    assert s["throughput"]["audio_seconds_per_s"] == round(audio / result.elapsed, 3)
    assert s["throughput"]["audio_unknown_requests"] == 0
    rtf = [x.latency / DURATIONS[x.file] for x in ok]
    assert s["request_rtf"]["avg"] == pytest.approx(sum(rtf) / len(rtf), abs=1e-4)
    assert s["request_rtf"]["max"] >= max(plans[request_id(result.run_id, x.index)]["sleep"] / DURATIONS[x.file]
                                          for x in ok)
    ms = [x.latency * 1000 for x in ok]
    for q in (50, 95, 99):
        assert s["latency_ms"][f"p{q}"] == pytest.approx(np.percentile(ms, q), abs=0.051)
    assert s["latency_ms"]["min"] >= 10.0  # no successful request slept less
    paths = report.write_report(result, s, tmp_path / "report", png=False)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert {r["request_id"]: r["worker"] for r in rows} == {rid: p["worker"] for rid, p in seen.items()}
