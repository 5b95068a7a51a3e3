"""GPU placement (scripts/fleet/config.py) with a fake `nvidia-smi` on PATH:
the GPU count gpu_count() reads from `nvidia-smi -L` (GPU lines only, MIG
lines and a failing or missing tool counted right), explicit devices beyond
that count falling back to the CPU with a warning on stderr, partial `gpus`
lists, and CUDA_VISIBLE_DEVICES (with CUDA_DEVICE_ORDER) as supervisord
itself reads it from the rendered program config: the GPU's index for a GPU
instance, empty for a CPU one."""

from __future__ import annotations

from pathlib import Path

import fleet_harness  # noqa: F401 - puts scripts/ on sys.path, for the fleet's modules below
import pytest
from machine import fake_nvidia_smi, program_envs

# isort: split
from fleet import config as fc
from fleet import placement, render
from fleet import state as fs

pytestmark = pytest.mark.unit

H200 = ("GPU 0: NVIDIA H200 (UUID: GPU-3b2c7f4e-1d6a-4c1e-9f0a-1a2b3c4d5e6f)\n"
        "GPU 1: NVIDIA H200 (UUID: GPU-8e9f0a1b-2c3d-4e5f-6a7b-8c9d0e1f2a3b)\n")
MIG = ("GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d9e0f1a-2b3c-4d5e-6f7a-8b9c0d1e2f3a)\n"
       "  MIG 3g.20gb     Device  0: (UUID: MIG-0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b)\n"
       "  MIG 3g.20gb     Device  1: (UUID: MIG-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809)\n")
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n")


def prints(text: str, code: int = 0) -> str:
    """A script body that insists on `-L`, prints `text` on stdout and exits `code`."""
    return f'[ "$1" = "-L" ] || exit 2\ncat <<"EOF"\n{text}EOF\nexit {code}'


@pytest.mark.parametrize("body, shebang, count", [
    (None, "#!/bin/sh", 0),  # no nvidia-smi at all
    (prints(H200), "#!/bin/sh", 2),
    (prints(MIG), "#!/bin/sh", 1),  # MIG slices are not GPUs of their own
    (prints(NO_DRIVER, 9), "#!/bin/sh", 0),  # installed, but no driver: exit 9
    (prints("No devices were found\n", 6), "#!/bin/sh", 0),
    (prints(H200), "#!/nonexistent/interpreter", 0),  # cannot even start: OSError
], ids=["absent", "two-h200", "mig", "no-driver", "no-devices", "cannot-start"])
def test_gpu_count_reads_nvidia_smi_list(tmp_path, monkeypatch, body, shebang, count):
    fake_nvidia_smi(tmp_path, monkeypatch, body, shebang)
    assert placement.gpu_count() == count


def resolve(tmp_path: Path, text: str, gpus: int | None = 2) -> dict:
    config = tmp_path / "fleet.toml"
    config.write_text(text)
    return fc.load(config, tmp_path / "run", gpus=gpus, cores=4)


def test_load_asks_nvidia_smi_when_not_told_and_puts_one_instance_on_each_gpu(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, prints(H200))
    resolved = resolve(tmp_path, 'instances = "auto"\n', gpus=None)
    assert resolved["gpus_found"] == 2
    assert [(i["device"], i["cuda_visible_devices"], i["cpu_threads"], i["max_concurrent"])
            for i in resolved["instances"]] == [("0", "0", None, 8), ("1", "1", None, 8)]
    fake_nvidia_smi(tmp_path, monkeypatch, prints(NO_DRIVER, 9))
    no_driver = resolve(tmp_path, 'instances = "auto"\n', gpus=None)
    assert no_driver["gpus_found"] == 0 and {i["device"] for i in no_driver["instances"]} == {"cpu"}


def test_an_explicit_device_beyond_the_gpus_runs_on_the_cpu_with_a_warning(tmp_path, capsys):
    text = ("[[instance]]\nport = 9001\ndevice = 1\n[[instance]]\nport = 9002\ndevice = 2\n"
            "[[instance]]\nport = 9003\ndevice = \"cpu\"\n[[instance]]\nport = 9004\n")
    resolved = resolve(tmp_path, text, gpus=2)
    assert [(i["device"], i["cuda_visible_devices"]) for i in resolved["instances"]] == \
        [("1", "1"), ("cpu", ""), ("cpu", ""), ("cpu", "")]  # no device: the CPU
    err = capsys.readouterr().err
    assert err == "fleet: [[instance]] #2: GPU 2 not present (2 found); running it on the CPU\n"
    resolve(tmp_path, "[[instance]]\nport = 9001\ndevice = 0\n", gpus=0)
    assert "[[instance]] #1: GPU 0 not present (0 found); running it on the CPU" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["-1", "true", '"gpu0"', "1.0", '"0"'])
def test_a_device_that_is_not_an_index_or_cpu_is_refused(tmp_path, device):
    with pytest.raises(fc.FleetError, match=r"\[\[instance\]\] #1: device must be a GPU index or \"cpu\""):
        resolve(tmp_path, f"[[instance]]\nport = 9001\ndevice = {device}\n")


def test_a_partial_gpu_list_uses_only_the_gpus_listed(tmp_path, capsys):
    second = resolve(tmp_path, "instances = 3\ngpus = [1]\n", gpus=2)
    assert [i["device"] for i in second["instances"]] == ["1", "1", "1"]
    assert {i["cuda_visible_devices"] for i in second["instances"]} == {"1"}
    assert capsys.readouterr().err == ""
    # GPU 5 is not there: it is left out and the instances share GPU 0 (none
    # goes to the CPU, which the warning used to claim).
    missing = resolve(tmp_path, "instances = 4\ngpus = [0, 5]\n", gpus=2)
    assert [i["device"] for i in missing["instances"]] == ["0", "0", "0", "0"]
    assert capsys.readouterr().err == "fleet: gpus: GPU 5 not present (2 found); leaving it out\n"
    # "auto" sizes by the GPUs used: one, not the two present.
    assert [i["device"] for i in resolve(tmp_path, 'instances = "auto"\ngpus = [0, 5]\n')["instances"]] == ["0"]
    # None of the listed GPUs present (or an empty list): every instance on the CPU.
    for text in ("instances = 2\ngpus = [5]\n", "instances = 2\ngpus = []\n"):
        assert {(i["device"], i["cuda_visible_devices"]) for i in resolve(tmp_path, text)["instances"]} == \
            {("cpu", "")}
    with pytest.raises(fc.FleetError, match="gpus must be"):
        resolve(tmp_path, 'gpus = "all"\n')
    with pytest.raises(fc.FleetError, match="gpus: device must be"):
        resolve(tmp_path, "gpus = [-1]\n")


def test_cuda_visible_devices_is_rendered_per_instance(tmp_path, capsys):
    text = ("instances = 4\n[[instance]]\nport = 9001\ndevice = 0\n[[instance]]\nport = 9002\ndevice = 1\n"
            "[[instance]]\nport = 9003\ndevice = \"cpu\"\n[[instance]]\nport = 9004\ndevice = 7\n")
    resolved = resolve(tmp_path, text, gpus=2)
    render.render_all(resolved, fs.read_state(tmp_path / "run", resolved))
    assert "GPU 7 not present" in capsys.readouterr().err
    conf = tmp_path / "run" / "supervisord.conf"
    envs = program_envs(conf)
    placed = {name: (env["CUDA_VISIBLE_DEVICES"], env.get("CUDA_DEVICE_ORDER")) for name, env in envs.items()
              if name.startswith("asr-")}
    assert placed == {"asr-9001": ("0", "PCI_BUS_ID"), "asr-9002": ("1", "PCI_BUS_ID"),
                      "asr-9003": ("", None), "asr-9004": ("", None)}
    # The program comments and the upstream say the same.
    text = conf.read_text()
    assert "[program:asr-9002]\n; GPU 1, weight 1;" in text and "[program:asr-9004]\n; CPU, weight 1;" in text
    upstream = (tmp_path / "run" / "upstream.conf").read_text()
    assert "# asr-9001 on GPU 0" in upstream and "# asr-9004 on CPU" in upstream
    # CPU instances get a thread share of the cores, GPU instances keep the engine's default.
    assert "ASR_CPU_THREADS" not in envs["asr-9001"] and envs["asr-9003"]["ASR_CPU_THREADS"] == "2"


def test_an_instance_env_can_still_pin_its_own_gpu(tmp_path):
    text = ('[[instance]]\nport = 9001\ndevice = 0\nenv = {CUDA_VISIBLE_DEVICES = "1"}\n'
            '[[instance]]\nport = 9002\nenv = {CUDA_VISIBLE_DEVICES = "99"}\n')
    resolved = resolve(tmp_path, text, gpus=2)
    render.render_all(resolved, fs.read_state(tmp_path / "run", resolved))
    envs = program_envs(tmp_path / "run" / "supervisord.conf")
    assert envs["asr-9001"]["CUDA_VISIBLE_DEVICES"] == "1" and envs["asr-9002"]["CUDA_VISIBLE_DEVICES"] == "99"
    assert (tmp_path / "run" / "supervisord.conf").read_text().count("CUDA_VISIBLE_DEVICES=") == 2
