"""The machine's capacity (scripts/fleet/capacity.py): the instance count of
instances = "auto", each instance's thread budget and admission limit, rendered into Supervisor's and Nginx's configs,
and the autoscaler never adding a CPU instance to saturated cores."""

from __future__ import annotations

import configparser
from pathlib import Path

import fleet_harness  # noqa: F401 - puts scripts/ on sys.path, for the fleet's modules below
import pytest
from machine import REPO

# isort: split
from fleet import capacity, render
from fleet import config as fc
from fleet import state as fs
from fleet.autoscale import Autoscaler

pytestmark = pytest.mark.unit


def resolve(tmp_path: Path, text: str, gpus: int = 0, cores: int = 2) -> dict:
    config = tmp_path / "fleet.toml"
    config.write_text(text)
    return fc.load(config, tmp_path / "run", gpus=gpus, cores=cores)


def test_cpu_instances_share_the_cores_at_max_size_and_gpus_keep_their_default(tmp_path):
    two = resolve(tmp_path, "instances = 2\nmax_instances = 2\n", cores=2)
    assert [i["cpu_threads"] for i in two["instances"]] == [1, 1]
    eight = resolve(tmp_path, "instances = 2\nmax_instances = 3\n", cores=8)
    assert [i["cpu_threads"] for i in eight["instances"]] == [2, 2, 2]  # 8 // 3 at max size
    crowded = resolve(tmp_path, "instances = 3\nmax_instances = 4\n", cores=2)
    assert [i["cpu_threads"] for i in crowded["instances"]] == [1, 1, 1, 1]  # never 0
    mixed = resolve(tmp_path, "instances = 3\ngpus = [0]\n[[instance]]\nport = 9001\ndevice = 0\n"
                              "[[instance]]\nport = 9002\n[[instance]]\nport = 9003\nmax_concurrent = 3\n",
                    gpus=1, cores=8)
    assert [(i["device"], i["cpu_threads"], i["max_concurrent"]) for i in mixed["instances"]] == \
        [("0", None, 8), ("cpu", 4, 2), ("cpu", 4, 3)]
    explicit = resolve(tmp_path, "instances = 2\n[worker.env]\nASR_CPU_THREADS = \"3\"\n", cores=2)
    assert {i["cpu_threads"] for i in explicit["instances"]} == {3}
    for key in ("ASR_PORT", "ASR_HOST", "ASR_INSTANCE_NAME"):
        with pytest.raises(fc.FleetError, match=f"{key} is the fleet's to set"):
            resolve(tmp_path, f'instances = 2\n[worker.env]\n{key} = "1"\n', cores=2)
    for bad in ("two", "0", "-1", "1.5"):
        with pytest.raises(fc.FleetError, match=f"ASR_CPU_THREADS must be a positive integer, not '{bad}'"):
            resolve(tmp_path, f'instances = 2\n[worker.env]\nASR_CPU_THREADS = "{bad}"\n', cores=2)


def test_auto_instances_are_one_per_gpu_else_one_per_core_up_to_the_cap(tmp_path):
    def shape(resolved: dict) -> list[tuple[str, int | None]]:
        assert resolved["min_instances"] == resolved["initial_instances"] == resolved["max_instances"]
        return [(i["device"], i["cpu_threads"]) for i in resolved["instances"]]

    auto = 'instances = "auto"\n'
    assert shape(resolve(tmp_path, auto, cores=1)) == [("cpu", 1)]
    assert shape(resolve(tmp_path, auto, cores=2)) == [("cpu", 1)] * 2
    assert shape(resolve(tmp_path, auto, cores=16)) == [("cpu", 16 // capacity.MAX_AUTO_CPU_INSTANCES)] * 4
    assert shape(resolve(tmp_path, auto, gpus=3, cores=16)) == [("0", None), ("1", None), ("2", None)]
    assert shape(resolve(tmp_path, auto + "gpus = [1]\n", gpus=2, cores=16)) == [("1", None)]
    listed = resolve(tmp_path, auto + "[[instance]]\nport = 9001\n[[instance]]\nport = 9002\n", cores=16)
    assert listed["initial_instances"] == 2
    assert resolve(tmp_path, "", cores=2)["initial_instances"] == 2  # "auto" is the default
    with pytest.raises(fc.FleetError, match="instances must be"):
        resolve(tmp_path, 'instances = "many"\n')


def test_the_budget_and_the_admission_limit_are_rendered_for_workers_and_nginx(tmp_path):
    resolved = resolve(tmp_path, "instances = 2\n[[instance]]\nport = 9001\ndevice = 0\n"
                                 "[[instance]]\nport = 9002\nmax_concurrent = 3\n", gpus=1, cores=2)
    state = fs.read_state(tmp_path / "run", resolved)
    render.render_all(resolved, state)
    supervisord = configparser.RawConfigParser(strict=False)
    supervisord.read(tmp_path / "run" / "supervisord.conf")
    gpu = supervisord.get("program:asr-9001", "environment")
    cpu = supervisord.get("program:asr-9002", "environment")
    assert 'ASR_MAX_CONCURRENT="8"' in gpu and "ASR_CPU_THREADS" not in gpu
    assert 'ASR_MAX_CONCURRENT="3"' in cpu and 'ASR_CPU_THREADS="2"' in cpu
    upstream = (tmp_path / "run" / "upstream.conf").read_text()
    assert "server 127.0.0.1:9001 weight=1 max_conns=8 max_fails=0;" in upstream
    assert "server 127.0.0.1:9002 weight=1 max_conns=3 max_fails=0;" in upstream
    nginx = (tmp_path / "run" / "nginx.conf").read_text()
    assert "add_header Retry-After 1 always;" in nginx.split("location @no_worker")[1]
    # Uploads up to 16 MB stay in Nginx's memory (fleet.toml: nginx.body_buffer_mb).
    assert "client_body_buffer_size 16384k;" in nginx
    small = resolve(tmp_path, "instances = 2\n[nginx]\nbody_buffer_mb = 0.5\n")
    render.render_all(small, fs.read_state(tmp_path / "run", small))
    assert "client_body_buffer_size 512k;" in (tmp_path / "run" / "nginx.conf").read_text()


def test_passive_health_comes_back_only_when_asked_for(tmp_path):
    resolved = resolve(tmp_path, "instances = 2\n[nginx]\nmax_fails = 3\n")
    render.render_all(resolved, fs.read_state(tmp_path / "run", resolved))
    assert "max_conns=2 max_fails=3 fail_timeout=10s;" in (tmp_path / "run" / "upstream.conf").read_text()


@pytest.mark.parametrize("text, words", [
    ("[worker.env]\nASR_MAX_CONCURRENT = \"4\"\n", "set max_concurrent"),
    ("[worker]\nmax_concurrent = 0\n", "max_concurrent"),
    ("cpu_cores = 0\n", "cpu_cores"),
])
def test_admission_and_cores_are_checked(tmp_path, text, words):
    with pytest.raises(fc.FleetError, match=words):
        config = tmp_path / "fleet.toml"
        config.write_text(text)
        fc.load(config, tmp_path / "run", gpus=0)


def test_a_cpu_instance_is_added_only_when_the_cores_have_room(tmp_path):
    resolved = resolve(tmp_path, "instances = 2\nmin_instances = 2\nmax_instances = 4\n", cores=4)
    active, spare = resolved["instances"][:2], resolved["instances"][2]
    assert spare["cpu_threads"] == 1
    idle = {"asr-8001": {"busy": False}, "asr-8002": {"busy": False}}
    assert capacity.busy_threads(resolved, active, idle) == 0
    # Both busy: 2 of 4 cores used, room for a third.
    busy = {"asr-8001": {"busy": True}, "asr-8002": {"in_flight": 2}}
    assert capacity.room_for(resolved, spare, capacity.busy_threads(resolved, active, busy), 50.0)[0]
    # An instance that does not answer counts as busy; saturated cores refuse.
    assert capacity.busy_threads(resolved, active, {"asr-8001": None, "asr-8002": {"busy": True}}) == 2
    ok, why = capacity.room_for(resolved, spare, 4, 50.0)
    assert not ok and "cores saturated" in why
    # Other processes saturating the host count too.
    ok, why = capacity.room_for(resolved, spare, 1, 97.0)
    assert not ok and "host CPU at 97%" in why
    gpu = dict(spare, device="0", cpu_threads=None)
    assert capacity.room_for(resolved, gpu, 4, 100.0)[0]


def test_the_autoscaler_holds_back_when_the_machine_has_no_room():
    knobs = {"high_mark": 0.9, "low_mark": 0.1, "high_for_s": 10, "low_for_s": 20, "cooldown_s": 30}
    scaler = Autoscaler(knobs)
    assert scaler.observe(100, 1.0, 2, 2, 4, 0, can_grow=False) is None
    assert scaler.observe(111, 1.0, 2, 2, 4, 0, can_grow=False) == "blocked"
    assert scaler.observe(112, 1.0, 2, 2, 4, 0, can_grow=True) == "up"


def test_the_default_fleet_on_this_machine_never_asks_for_more_threads_than_cores(tmp_path):
    resolved = fc.load(REPO / "fleet.toml", tmp_path / "run")
    cpu = [i for i in resolved["instances"][:resolved["max_instances"]] if i["device"] == "cpu"]
    assert sum(i["cpu_threads"] for i in cpu) <= max(resolved["cores"], len(cpu))
