"""The load test tool against a real Gunicorn worker on loopback."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import soundfile
from machine import REPO, fake_nvidia_smi, free_ports
from PIL import Image
from speech import CARDS

sys.path.insert(0, str(REPO / "scripts"))
from loadtest import cli as loadtest
from loadtest import report as loadtest_report

pytestmark = pytest.mark.worker

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def worker(module_worker, audio_dir):
    """One real pocketsphinx worker shared by the module's cases."""
    return module_worker(ASR_ENGINE="pocketsphinx", ASR_INSTANCE_NAME="lt-worker")


@pytest.fixture(scope="module")
def cards_dir(tmp_path_factory) -> Path:
    """The short card recordings, plus what a folder scan must skip: text files and subfolders."""
    folder = tmp_path_factory.mktemp("cards")
    for name in CARDS:
        shutil.copy(loadtest.DEFAULT_AUDIO / name, folder / name)
    (folder / "cards.transcription").write_text("not audio\n")
    (folder / "edge").mkdir()
    shutil.copy(loadtest.DEFAULT_AUDIO / "edge" / "bad.wav", folder / "edge" / "bad.wav")
    return folder


def stats(worker) -> dict:
    return requests.get(worker.url + "/stats", timeout=5).json()


def test_run_counts_every_request_and_writes_the_report(worker, cards_dir, tmp_path):
    before = stats(worker)["total_requests"]
    config = loadtest.LoadConfig(url=worker.url, files=[cards_dir], concurrency=3, requests=3, warmup=2,
                                 sample_interval=0.2)
    result = loadtest.run_load(config)
    summary = loadtest.summarize(result)

    # The folder scan took the five recordings and nothing else.
    assert summary["files_in_mix"] == 5 and set(summary["files"]) <= set(CARDS)
    req = summary["requests"]
    assert req == {"sent": 9, "ok": 9, "failed": 0, "success_rate": 1.0}, summary["error_samples"]
    assert summary["warmup"] == {"sent": 2, "ok": 2}
    assert summary["stopped_by"] == "requests"
    # The worker counted exactly what was sent, warm-up included.
    assert stats(worker)["total_requests"] - before == 9 + 2
    assert summary["status_codes"] == {"200": 9} and summary["errors"] == {}
    assert list(summary["instances"]) == ["lt-worker"]
    assert sum(i["share"] for i in summary["instances"].values()) == pytest.approx(1.0)
    assert sum(i["requests"] for i in summary["instances"].values()) == 9
    # Users start at different files, so the mix covers them: user u sends files u, u+1, u+2.
    assert {s.file for s in result.samples} == set(CARDS)
    expected_audio = sum(soundfile.info(str(cards_dir / s.file)).duration for s in result.samples)
    assert summary["throughput"]["audio_seconds"] == pytest.approx(expected_audio, abs=0.01)
    assert summary["throughput"]["audio_seconds_per_s"] == pytest.approx(
        expected_audio / result.elapsed, rel=0.01)
    lat = summary["latency_ms"]
    assert lat["count"] == 9 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] \
        <= lat["max"]
    timeline = summary["timeline"]
    assert sum(r * timeline["bin_s"] for r in timeline["ok_per_s"][:-1]) + \
        timeline["ok_per_s"][-1] * (result.elapsed - (len(timeline["t"]) - 1) * timeline["bin_s"]) \
        == pytest.approx(9, abs=0.05)
    res = summary["resources"]
    assert res["samples"] >= 1 and 0 <= res["cpu_percent"]["avg"] <= 100 and res["memory_total_mb"] > 0
    assert summary["suggestions"]

    paths = loadtest_report.write_report(result, summary, tmp_path / "report")
    assert json.loads(paths["json"].read_text())["requests"]["sent"] == 9
    text = paths["text"].read_text()
    assert "9 sent, 9 ok, 0 failed" in text and "lt-worker" in text and "Suggestions" in text
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 9 and len({r["request_id"] for r in rows}) == 9
    # Each request ID reached the worker: its log names them.
    log = worker.log_path.read_text()
    assert all(f"id={r['request_id']}" in log for r in rows)
    png = paths["png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(paths["png"]) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 500


def test_cli_openai_endpoint_duration_capped_by_max_requests(worker, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "loadtest.py"), "--url", worker.url,
         "--endpoint", "/v1/audio/transcriptions", "--files", str(loadtest.DEFAULT_AUDIO / "cards001.wav"),
         "--concurrency", "2", "--duration", "30", "--max-requests", "4", "--lang", "en",
         "--min-success", "1", "--no-png", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"]["sent"] == 4 and summary["requests"]["ok"] == 4
    assert summary["stopped_by"] == "max_requests" and summary["elapsed_s"] < 30
    assert summary["target"].endswith("/v1/audio/transcriptions")
    assert not (out / "loadtest.png").exists()
    assert "Requests      4 sent, 4 ok" in proc.stdout
    assert (out / "report.txt").read_text().strip() in proc.stdout


def test_duration_bounds_the_run(worker):
    config = loadtest.LoadConfig(url=worker.url, files=[loadtest.DEFAULT_AUDIO / "cards001.wav"],
                                 concurrency=2, duration=1.5, delay=0.1)
    result = loadtest.run_load(config)
    summary = loadtest.summarize(result)
    assert summary["stopped_by"] == "duration"
    assert result.samples and all(s.start < 1.5 for s in result.samples)
    assert result.elapsed < 1.5 + 5
    assert summary["requests"]["ok"] == summary["requests"]["sent"] == len(result.samples)


def test_503s_under_load_are_counted_and_explained(start_worker, audio_dir):
    tiny_queue = start_worker(ASR_ENGINE="pocketsphinx", ASR_QUEUE_MAX_ITEMS="2", ASR_BATCH_MAX_ITEMS="1")
    # jfk.flac is four VAD segments: one request nearly fills the queue alone.
    config = loadtest.LoadConfig(url=tiny_queue.url, files=[audio_dir / "jfk.flac"], concurrency=6,
                                 requests=1)
    summary = loadtest.summarize(loadtest.run_load(config))
    req, codes = summary["requests"], summary["status_codes"]
    assert req["sent"] == 6 and sum(codes.values()) == 6
    assert codes.get("503", 0) >= 1 and summary["errors"]["http_503"] == codes["503"]
    assert req["failed"] == codes["503"] and req["ok"] == codes.get("200", 0)
    assert "queue full" in summary["error_samples"]["http_503"]
    assert any("503" in line and "ASR_QUEUE_MAX_ITEMS" in line for line in summary["suggestions"])
    # 503s come from the worker too, so every answer is attributed to it.
    assert sum(i["share"] for i in summary["instances"].values()) == pytest.approx(1.0)


def test_closed_port_is_reported_as_connection_errors(tmp_path, audio_dir):
    url = f"http://127.0.0.1:{free_ports()[0]}"
    config = loadtest.LoadConfig(url=url, files=[audio_dir / "cards001.wav"], concurrency=2, requests=3)
    result = loadtest.run_load(config)
    summary = loadtest.summarize(result)
    assert summary["requests"] == {"sent": 6, "ok": 0, "failed": 6, "success_rate": 0.0}
    assert summary["errors"] == {"connection": 6} and summary["status_codes"] == {}
    assert summary["instances"] == {} and summary["latency_ms"]["p50"] is None
    assert any("Nothing answered" in line for line in summary["suggestions"])
    paths = loadtest_report.write_report(result, summary, tmp_path / "report")
    assert paths["png"].read_bytes().startswith(PNG_SIGNATURE)
    # From the command line, a floor on the success rate turns it into a failure.
    code = loadtest.main(["--url", url, "--files", str(audio_dir / "cards001.wav"), "-c", "1", "-n", "2",
                          "--no-progress", "--no-png", "--min-success", "0.5",
                          "--out", str(tmp_path / "cli")])
    assert code == 1
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["errors"] == {"connection": 2}


@pytest.mark.parametrize("url", ["http://192.0.2.1:5002", "http://example.com", "http://10.0.0.1",
                                 "ftp://127.0.0.1/", "127.0.0.1:5002"])
def test_non_loopback_or_odd_targets_are_refused(url, tmp_path, capsys):
    out = tmp_path / "never"
    assert loadtest.main(["--url", url, "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()
    assert "loadtest:" in capsys.readouterr().err
    with pytest.raises(ValueError):
        loadtest.LoadConfig(url=url).validate()


def test_loopback_forms_and_allow_remote_pass_the_check():
    for url in ("http://127.0.0.1:5002", "http://localhost:5002/", "http://[::1]:5002", "http://127.1.2.3"):
        assert loadtest.check_target(url) == url.rstrip("/")
    assert loadtest.check_target("http://192.0.2.1:5002", allow_remote=True) == "http://192.0.2.1:5002"


@pytest.mark.parametrize("kwargs", [{"concurrency": 0}, {"requests": 0}, {"duration": -1},
                                    {"endpoint": "/nope"}, {"timeout": 0}, {"max_requests": 0},
                                    {"duration": 100, "max_duration": 10}])
def test_bad_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        loadtest.LoadConfig(**kwargs).validate()


def test_percentile_matches_linear_interpolation():
    values = [10.0, 20.0, 30.0, 40.0]
    assert loadtest.percentile(values, 50) == 25.0
    assert loadtest.percentile(values, 0) == 10.0 and loadtest.percentile(values, 100) == 40.0
    assert loadtest.percentile([7.0], 99) == 7.0 and loadtest.percentile([], 50) is None


def test_gpu_figures_come_from_nvidia_smi_when_present(tmp_path, monkeypatch, audio_dir):
    fake_nvidia_smi(tmp_path, monkeypatch, "echo '0, NVIDIA H100 80GB HBM3, 37, 1024, 81559'")
    url = f"http://127.0.0.1:{free_ports()[0]}"
    config = loadtest.LoadConfig(url=url, files=[audio_dir / "cards001.wav"], concurrency=1, requests=2,
                                 delay=0.3, sample_interval=0.1)
    summary = loadtest.summarize(loadtest.run_load(config))
    (gpu,) = summary["resources"]["gpus"]
    assert gpu["index"] == "0" and gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["util_percent"] == {"avg": 37.0, "max": 37.0} and gpu["memory_total_mb"] == 81559.0
    assert "GPU 0" in loadtest_report.render_text(summary)
