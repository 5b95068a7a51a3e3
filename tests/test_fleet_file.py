"""The fleet file and what it renders, without starting anything: the
default fleet.toml sized for two cores, the shorthand spread over GPUs, bad
fleet files refused with a reason, the Nginx upstream (weights, spares,
ejected instances, least_conn) and Supervisor programs, the files
`install-system` writes, and the autoscaler's decisions."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import fleet_harness  # noqa: F401 - puts scripts/ on sys.path, for the fleet's modules below
import pytest
from machine import REPO, require_tool

# isort: split
from fleet import config as fc
from fleet import render
from fleet import state as fs
from fleet.autoscale import Autoscaler

pytestmark = pytest.mark.fleet


def resolve(tmp_path: Path, text: str, gpus: int = 0) -> dict:
    config = tmp_path / "fleet.toml"
    config.write_text(text)
    return fc.load(config, tmp_path / "run", gpus=gpus)


# --- the fleet file and rendering (no processes) -------------------------------

def test_default_fleet_file_is_two_cpu_instances_on_5002_sized_for_two_cores(tmp_path):
    resolved = fc.load(REPO / "fleet.toml", tmp_path / "run", gpus=0, cores=2)
    assert resolved["front_port"] == 5002 and resolved["engine"] == "auto"
    assert resolved["initial_instances"] == resolved["min_instances"] == resolved["max_instances"] == 2
    assert [i["port"] for i in resolved["instances"]] == [8001, 8002]
    assert {i["device"] for i in resolved["instances"]} == {"cpu"}
    # One core each, two requests each: the cores are the limit, not the queue.
    assert [(i["cpu_threads"], i["max_concurrent"]) for i in resolved["instances"]] == [(1, 2), (1, 2)]
    assert resolved["nginx"]["max_fails"] == 0 and resolved["scaling"]["metric"] == "utilization"
    assert resolved["worker"]["stopwaitsecs"] > resolved["worker"]["graceful_timeout_s"]


def test_shorthand_spreads_instances_over_gpus_round_robin(tmp_path):
    resolved = resolve(tmp_path, "instances = 5\ngpus = [0, 1]\n", gpus=2)
    assert [i["device"] for i in resolved["instances"]] == ["0", "1", "0", "1", "0"]
    assert [i["cuda_visible_devices"] for i in resolved["instances"]][:2] == ["0", "1"]
    auto = resolve(tmp_path, "instances = 3\n", gpus=2)
    assert [i["device"] for i in auto["instances"]] == ["0", "1", "0"]
    no_gpu = resolve(tmp_path, "instances = 3\ngpus = [0, 1]\n", gpus=0)
    assert {i["device"] for i in no_gpu["instances"]} == {"cpu"}
    assert {i["cuda_visible_devices"] for i in no_gpu["instances"]} == {""}


@pytest.mark.parametrize("text, words", [
    ("instanses = 3\n", "unknown key"),
    ("instances = 3\nmin_instances = 4\nmax_instances = 4\n", "min_instances"),
    ("balancing = \"random\"\n", "balancing"),
    ("[worker]\nstopwaitsecs = 30\n", "stopwaitsecs"),
    ("[[instance]]\nport = 9001\n[[instance]]\nport = 9001\n", "distinct"),
    ("[[instance]]\nport = 9001\nweight = 0\n", "weight"),
])
def test_bad_fleet_files_are_refused_with_a_reason(tmp_path, text, words):
    with pytest.raises(fc.FleetError, match=words):
        resolve(tmp_path, text)


def _render(tmp_path: Path, text: str, state: dict | None = None) -> tuple[dict, dict]:
    resolved = resolve(tmp_path, text)
    state = {**fs.read_state(tmp_path / "run", resolved), **(state or {})}
    render.render_all(resolved, state)
    return resolved, state


def test_rendered_configs_weights_spares_and_supervisor_socket(tmp_path):
    text = ("instances = 2\nmax_instances = 3\nmin_instances = 1\n"
            "[[instance]]\nport = 9001\nweight = 3\n[[instance]]\nport = 9002\n[[instance]]\nport = 9003\n")
    resolved, _ = _render(tmp_path, text)
    run = tmp_path / "run"
    upstream = (run / "upstream.conf").read_text()
    assert "server 127.0.0.1:9001 weight=3" in upstream and "127.0.0.1:9002 weight=1" in upstream
    assert "9003" not in upstream and "least_conn;" in upstream  # the default balancing
    supervisord = configparser.RawConfigParser(strict=False)
    supervisord.read(run / "supervisord.conf")
    assert supervisord.get("unix_http_server", "chmod") == "0700"
    assert not any(s.startswith("inet_http_server") for s in supervisord.sections())
    assert supervisord.get("program:asr-9001", "autostart") == "true"
    assert supervisord.get("program:asr-9003", "autostart") == "false"
    program = dict(supervisord.items("program:asr-9002"))
    assert 'ASR_PORT="9002"' in program["environment"] and 'CUDA_VISIBLE_DEVICES=""' in program["environment"]
    assert int(program["stopwaitsecs"]) > 30 and program["stopasgroup"] == "true"
    command = "gunicorn -c deploy/gunicorn.conf.py --graceful-timeout 30 'app:create_app()'"
    assert command in program["command"]
    assert {"program:nginx", "program:health-poller"} <= set(supervisord.sections())
    nginx = (run / "nginx.conf").read_text()
    assert "daemon off;" in nginx and "proxy_next_upstream error http_503 non_idempotent;" in nginx
    assert "timeout" not in nginx.split("proxy_next_upstream ")[1].split(";")[0]
    require_tool("nginx")  # the rest holds without it; `nginx -t` needs it
    test = subprocess.run(resolved["nginx_cmd"] + ["-t"], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    _render(tmp_path, 'balancing = "round_robin"\n' + text)
    assert "least_conn;" not in (run / "upstream.conf").read_text()


def test_least_conn_ejected_and_all_down_fallback(tmp_path):
    text = "instances = 3\n"  # least_conn by default
    _render(tmp_path, text, {"ejected": {"asr-8002": "unhealthy: timed out"}})
    upstream = (tmp_path / "run" / "upstream.conf").read_text()
    assert "least_conn;" in upstream
    assert "127.0.0.1:8002 weight=1 max_conns=2 max_fails=0 down;" in upstream
    everyone = {"ejected": {n: "x" for n in ("asr-8001", "asr-8002", "asr-8003")}}
    _render(tmp_path, text, everyone)
    assert " down;" not in (tmp_path / "run" / "upstream.conf").read_text()


def test_install_system_renders_conf_d_files(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "fleet.py"), "--config",
                             str(REPO / "fleet.toml"), "install-system", "--target", str(tmp_path),
                             "--user", "nobody"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    nginx = (tmp_path / "etc/nginx/conf.d/asr-fleet.conf").read_text()
    assert "include /var/lib/asr-fleet/upstream.conf;" in nginx and "daemon off" not in nginx
    programs = (tmp_path / "etc/supervisor/conf.d/asr-fleet.conf").read_text()
    assert "[supervisord]" not in programs and "[program:nginx]" not in programs
    assert "user=nobody" in programs and "[program:health-poller]" in programs
    assert "127.0.0.1:8001" in (tmp_path / "var/lib/asr-fleet/upstream.conf").read_text()


def test_autoscaler_marks_duration_cooldown_and_bounds():
    knobs = {"high_mark": 4, "low_mark": 0.5, "high_for_s": 10, "low_for_s": 20, "cooldown_s": 30}
    scaler = Autoscaler(knobs)
    assert scaler.observe(100, 6, 3, 2, 4, 0) is None  # high, but not for long yet
    assert scaler.observe(105, 2, 3, 2, 4, 0) is None  # back in range: the clock restarts
    assert scaler.observe(106, 6, 3, 2, 4, 0) is None
    assert scaler.observe(116, 6, 3, 2, 4, 0) == "up"
    assert scaler.observe(130, 6, 4, 2, 4, 116) is None  # cooldown
    assert scaler.observe(200, 6, 4, 2, 4, 116) is None  # at max_instances
    scaler = Autoscaler(knobs)
    assert scaler.observe(300, 0, 3, 2, 4, 0) is None
    assert scaler.observe(320, 0, 3, 2, 4, 0) == "down"
    assert scaler.observe(400, 0, 2, 2, 4, 0) is None  # never below min_instances
    assert scaler.observe(500, None, 3, 2, 4, 0) is None  # nothing healthy: no decision
