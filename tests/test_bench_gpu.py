"""The benchmarks on a GPU machine, proven with a fake `nvidia-smi` on PATH
(no GPU, fleet or model needed): each GPU's name, driver and memory in
env.machine() and the document's header (and "no GPU" without one); fleet
instances on GPUs in the lab's fleet file, accepted as such by the fleet's own
loader and render, direct workers pinned through CUDA_VISIBLE_DEVICES in turn,
and all on the CPU without GPUs; the sampler's per-GPU mean and max
utilisation and max memory from the fake's readings, taken in the background
only during a load, stored by `bench.py` in the benchmark's results and shown
in its section; a SIGTERM (the GPU script's deadline) unwinding the lab; and
scripts/bench_gpu.sh refusing without a GPU, its steps valid bench.py runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib

import pytest
from machine import REPO, fake_nvidia_smi, wait_for

sys.path.insert(0, str(REPO / "scripts"))
from bench import cli, doc, env, gpu, lab
from fleet import config as fleet_config
from fleet import render

pytestmark = pytest.mark.unit

QUERY = "--format=csv,noheader,nounits"
# Readings per call of the sampler's query: GPU 1's "[N/A]" reading is skipped,
# every call after the third repeats the third.
READINGS = ["0, 10, 1000\n1, 0, 500", "0, 90, 3000\n1, [N/A], 600", "0, 50, 2000\n1, 30, 700"]


def two_h200(tmp_path, monkeypatch) -> None:
    """A fake nvidia-smi with two H200s that answers exactly the fleet's and the bench's questions and
    counts the sampler's calls in tmp_path/calls."""
    cases = "\n".join(f"    {n}) printf '%s\\n' '{r}';;" for n, r in enumerate(READINGS[:-1]))
    fake_nvidia_smi(tmp_path, monkeypatch, f"""case "$*" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-1)"; echo "GPU 1: NVIDIA H200 (UUID: GPU-2)";;
  "--query-gpu=index,name,driver_version,memory.total {QUERY}")
    echo "0, NVIDIA H200, 550.54.15, 143771"; echo "1, NVIDIA H200, 550.54.15, [N/A]";;
  "--query-gpu=index,utilization.gpu,memory.used {QUERY}")
    n=$(cat "{tmp_path}/calls" 2>/dev/null || echo 0)
    echo $((n + 1)) > "{tmp_path}/calls.new" && mv "{tmp_path}/calls.new" "{tmp_path}/calls"
    case $n in
{cases}
    *) printf '%s\\n' '{READINGS[-1]}';;
    esac;;
  *) exit 2;;
esac""")


def no_nvidia_smi(tmp_path, monkeypatch) -> None:
    """PATH without any nvidia-smi (tmp_path/bin may hold an earlier fake)."""
    (tmp_path / "bare").mkdir(exist_ok=True)
    fake_nvidia_smi(tmp_path / "bare", monkeypatch, None)


def calls(tmp_path) -> int:
    path = tmp_path / "calls"
    return int(path.read_text()) if path.exists() else 0


def test_the_gpu_record_names_each_gpu_and_the_document_says_no_gpu_only_without_one(tmp_path, monkeypatch):
    two_h200(tmp_path, monkeypatch)
    machine = env.machine()
    assert machine["gpus"] == [
        {"index": 0, "name": "NVIDIA H200", "driver": "550.54.15", "memory_total_mb": 143771.0},
        {"index": 1, "name": "NVIDIA H200", "driver": "550.54.15", "memory_total_mb": None}]
    header = doc.render({}, machine, "make bench", 60).split("\n## ")[0]
    assert ("GPU 0: NVIDIA H200 (driver 550.54.15, 143,771 MiB), GPU 1: NVIDIA H200 (driver 550.54.15, "
            "? MiB). Audio:") in header and "no GPU" not in header
    fake_nvidia_smi(tmp_path, monkeypatch, 'echo "NVIDIA-SMI has failed: no driver"; exit 9')
    assert env.machine()["gpus"] == []
    no_nvidia_smi(tmp_path, monkeypatch)
    no_gpu = env.machine()
    assert no_gpu["gpus"] == [] and ", no GPU. Audio:" in doc.render({}, no_gpu, "make bench", 60)


def test_the_lab_puts_fleet_instances_and_workers_on_the_gpus_in_turn(tmp_path, monkeypatch, capsys):
    two_h200(tmp_path, monkeypatch)
    started = []
    monkeypatch.setattr(lab.Fleet, "start", lambda self: started.append(self) or self)  # no real fleet
    monkeypatch.setattr(lab, "Worker", Recorded)  # nor real workers
    the_lab = lab.Lab(tmp_path / "work")
    assert the_lab.gpus == 2 and gpu.in_process() == {"cuda_visible_devices": "0"}
    fleet = the_lab.fleet("gpu", pool=3, size=1, balancing="round_robin", engine="pocketsphinx")
    assert started == [fleet]
    assert [i["device"] for i in tomllib.loads(fleet.toml)["instance"]] == [0, 1, 0]
    resolved = fleet_config.load(fleet.config, tmp_path / "run")  # the fleet asks the same nvidia-smi
    assert [i["cuda_visible_devices"] for i in resolved["instances"]] == ["0", "1", "0"]
    assert 'CUDA_VISIBLE_DEVICES="1",CUDA_DEVICE_ORDER="PCI_BUS_ID"' in render.supervisor_env(
        resolved, resolved["instances"][1])
    assert "not present" not in capsys.readouterr().err  # no instance fell back to the CPU
    envs = [the_lab.worker(f"w{n}", {"ASR_ENGINE": "funasr"}).env for n in range(3)]
    assert [(e["ASR_ENGINE"], e["CUDA_VISIBLE_DEVICES"], e["CUDA_DEVICE_ORDER"]) for e in envs] == \
        [("funasr", "0", "PCI_BUS_ID"), ("funasr", "1", "PCI_BUS_ID"), ("funasr", "0", "PCI_BUS_ID")]
    pinned = {"CUDA_VISIBLE_DEVICES": "1"}  # a benchmark that pins its worker keeps its pin
    assert the_lab.worker("pinned", pinned).env == pinned

    no_nvidia_smi(tmp_path, monkeypatch)
    cpu_lab = lab.Lab(tmp_path / "cpu")
    assert cpu_lab.gpus == 0 and gpu.in_process() == {}
    cpu_fleet = cpu_lab.fleet("cpu", pool=2, size=1, balancing="round_robin", engine="pocketsphinx")
    assert [i["device"] for i in tomllib.loads(cpu_fleet.toml)["instance"]] == ["cpu", "cpu"]
    assert cpu_lab.worker("w", {"ASR_ENGINE": "funasr"}).env == {"ASR_ENGINE": "funasr"}


class Recorded:
    """Stands in for lab.Worker: keeps the env the lab gives it, starts nothing."""

    def __init__(self, work, name: str, env: dict):
        self.env = env

    def wait_ready(self, timeout: float) -> Recorded:
        return self

    def stop(self) -> None:
        pass


def test_the_sampler_summarises_each_gpu_readings(tmp_path, monkeypatch):
    two_h200(tmp_path, monkeypatch)
    sampler = gpu.Sampler()
    for _ in READINGS:
        sampler.sample()
    assert gpu.summarise(sampler.samples) == {
        "0": {"util_mean": 50.0, "util_max": 90.0, "memory_max_mb": 3000.0, "samples": 3},
        "1": {"util_mean": 15.0, "util_max": 30.0, "memory_max_mb": 700.0, "samples": 2}}


def test_bench_samples_the_gpus_in_the_background_during_a_load_and_documents_it(tmp_path, monkeypatch):
    two_h200(tmp_path, monkeypatch)
    monkeypatch.setattr(gpu, "INTERVAL_S", 0.05)
    with gpu.during_load():  # outside a benchmark: nothing is asked
        pass
    assert calls(tmp_path) == 0

    def a_load(the_lab, opts) -> dict:  # the rtf benchmark's shape, its load the wait below
        with gpu.during_load():
            wait_for(lambda: calls(tmp_path) >= 4, 30, "four readings taken while the load runs")
        return {"name": "rtf", "table": {}, "files": [], "audio_s": 0}

    monkeypatch.setitem(cli.BENCHMARKS, "rtf", a_load)
    out = tmp_path / "b.md"
    assert cli.main(["--only", "rtf", "--fresh", "--out", str(out), "--work", str(tmp_path / "w")]) == 0
    taken = calls(tmp_path)  # readings while the load ran, and one at its end
    stored = json.loads(out.with_suffix(".json").read_text())["results"]["rtf"]["gpu"]
    assert stored["0"]["samples"] == taken and stored["1"]["samples"] == taken - 1  # "[N/A]" skipped
    assert stored["0"]["util_max"] == 90.0 and stored["0"]["memory_max_mb"] == 3000.0
    assert stored["0"]["util_mean"] == round((10 + 90 + 50 * (taken - 2)) / taken, 1)
    text = out.read_text()
    assert (f"GPU 0: utilisation mean {stored['0']['util_mean']:.0f}%, max 90%, memory in use up to "
            f"3,000 MiB ({taken} readings)") in text
    assert "Measured on a GPU machine: rtf (GPU 0: NVIDIA H200" in text and "Not measured: no GPU" not in text

    no_nvidia_smi(tmp_path, monkeypatch)  # the same run without GPUs: no GPU figure anywhere
    monkeypatch.setitem(cli.BENCHMARKS, "rtf", lambda the_lab, opts: {"name": "rtf", "table": {},
                                                                       "files": [], "audio_s": 0})
    assert cli.main(["--only", "rtf", "--fresh", "--out", str(out), "--work", str(tmp_path / "w")]) == 0
    assert "gpu" not in json.loads(out.with_suffix(".json").read_text())["results"]["rtf"]
    text = out.read_text()
    assert "utilisation" not in text and "GPU 0" not in text
    assert "## GPU\n\nNot measured: no GPU machine was lent" in text and "`make bench-gpu`" in text


def test_sigterm_unwinds_the_lab_so_what_it_started_is_stopped(tmp_path):
    stopped = []
    ignore = lambda signum, frame: None  # without the lab's, SIGTERM would end pytest
    original = signal.signal(signal.SIGTERM, ignore)
    try:
        with pytest.raises(KeyboardInterrupt), lab.Lab(tmp_path, gpus=0) as the_lab:
            the_lab.things.append(type("Thing", (), {"stop": lambda self: stopped.append(True)})())
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(lambda: False, 10, "SIGTERM to interrupt the benchmark")
        assert stopped == [True] and signal.getsignal(signal.SIGTERM) is ignore  # and the lab's is gone
    finally:
        signal.signal(signal.SIGTERM, original)


def script(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / "bench_gpu.sh"), *args], cwd=tmp_path, text=True,
                          capture_output=True, timeout=120, check=False)


def test_the_gpu_script_refuses_without_a_gpu_and_its_steps_are_valid_bench_runs(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, 'echo "No devices were found"; exit 6')
    refused = script(tmp_path)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == ("bench-gpu: no GPU visible to nvidia-smi: nothing to measure here "
                              "(make bench runs the CPU benchmarks)\n")
    two_h200(tmp_path, monkeypatch)
    parsed = script(tmp_path, "--help")  # each step's options parsed by bench.py, then its help: no run
    assert parsed.returncode == 0, parsed.stderr
    assert parsed.stdout.count("usage: bench.py") == 3
