"""The fleet: fleet file, rendered configs, and a real fleet (supervisord,
Nginx, Gunicorn workers on the embedded engine, the health poller) in its own
run folder on free ports."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
from fleet_helpers import CLIP, REPO, Fleet, Stream, post_clip, wait_for  # also puts scripts/ on sys.path

# isort: split
import fleet_config as fc
import fleet_render as render
import fleet_state as fs
from fleet_autoscale import Autoscaler

pytestmark = pytest.mark.fleet

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


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
    assert "9003" not in upstream and "least_conn;" not in upstream
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
    if Path(NGINX).exists():
        test = subprocess.run(resolved["nginx_cmd"] + ["-t"], capture_output=True, text=True)
        assert test.returncode == 0, test.stderr


def test_least_conn_ejected_and_all_down_fallback(tmp_path):
    text = "instances = 3\nbalancing = \"least_conn\"\n"
    resolved, state = _render(tmp_path, text, {"ejected": {"asr-8002": "unhealthy: timed out"}})
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


# --- a real fleet ------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if not CLIP.exists():
        pytest.skip(f"{CLIP} is not present")
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (scripts/setup.sh --system)")
    # Weights 1:2:1 on three active instances, a fourth spare for scaling.
    # Four requests each at most: the weights decide until an instance is
    # full (max_conns), and the tests' three clients never fill one.
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), weights=[1, 2, 1, 1], active=3,
                  tables={"worker": {"max_concurrent": 4}})
    fleet.start()
    try:
        fleet.wait_settled(3)
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture()
def settled(fleet):
    """Each test starts from three healthy active instances."""
    fleet.wait_settled(3)
    return fleet


def test_workers_listen_on_loopback_only_and_processes_run(settled):
    listeners = {}
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port in settled.ports[:3]:
            listeners.setdefault(conn.laddr.port, set()).add(conn.laddr.ip)
    assert set(listeners) == set(settled.ports[:3])
    assert all(ips == {"127.0.0.1"} for ips in listeners.values()), listeners
    assert (settled.run_dir / "supervisor.sock").stat().st_mode & 0o777 == 0o700
    status = settled.cli("status")
    assert status.stdout.count("RUNNING") == 5, status.stdout  # 3 instances, nginx, poller


def test_requests_follow_the_weights(settled):
    with Stream(settled.url, concurrency=3, maximum=200) as stream:
        stream.wait_done(200, timeout=240)
    assert stream.failures() == []
    counts = stream.by_worker()
    total_weight = sum(settled.weights[n] for n in settled.names[:3])
    for name in settled.names[:3]:
        expected = 200 * settled.weights[name] / total_weight
        assert abs(counts.get(name, 0) - expected) <= 0.1 * expected, counts


def test_kill_9_during_a_stream_loses_nothing_and_the_instance_rejoins(settled):
    victim = settled.names[1]
    with Stream(settled.url, concurrency=3, maximum=100) as stream:
        stream.wait_done(15)
        old_pid = settled.signal_instance(victim, signal.SIGKILL)
        stream.wait_done(100, timeout=240)
    assert stream.failures() == [], stream.failures()[:5]
    wait_for(lambda: settled.pid(victim) not in (0, old_pid), 30, "Supervisor to restart the instance")
    settled.wait_settled(3)
    workers = {post_clip(settled.url)[1] for _ in range(8)}
    assert victim in workers, workers


def test_poller_ejects_restarts_and_restores_an_unresponsive_instance(settled):
    victim = settled.names[2]
    old_pid = settled.signal_instance(victim, signal.SIGSTOP)
    try:
        wait_for(lambda: settled.instance(victim)["state"] == "ejected", 30, "the poller to eject it")
        assert " down;" in (settled.run_dir / "upstream.conf").read_text()
        assert victim in settled.events() and "ejected from the upstream" in settled.events()
        # Out of the upstream: no request waits on the frozen instance.
        seen = {requests.get(settled.url + "/health", timeout=10).headers["X-ASR-Worker"] for _ in range(8)}
        assert victim not in seen
        wait_for(lambda: re.search(rf"{victim}: .*restarting it", settled.events()), 30,
                 "the poller to restart it")
    finally:
        # The poller killed the frozen group (SIGKILL needs no SIGCONT); if
        # the test failed before that, let it run again.
        try:
            os.killpg(old_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    wait_for(lambda: settled.pid(victim) not in (0, old_pid), 60, "a new process")
    wait_for(lambda: settled.instance(victim)["in_upstream"], 60, "the poller to restore it")
    assert f"{victim}: ejected -> healthy" in settled.events()


def test_scaling_up_and_down_during_a_stream_loses_nothing(settled):
    spare = settled.names[3]
    with Stream(settled.url, concurrency=3, minimum=30) as stream:
        stream.wait_done(5)
        settled.cli("scale", "4")
        assert f"127.0.0.1:{settled.ports[3]} " in (settled.run_dir / "upstream.conf").read_text()
        wait_for(lambda: settled.instance(spare)["in_upstream"], 10, "/fleet to show it")
        wait_for(lambda: stream.by_worker().get(spare), 30, "the new instance to serve a request")
        settled.cli("scale", "2")
        stream.wait_done(len(stream.results) + 6)
    assert stream.failures() == [], stream.failures()[:5]
    status = settled.status()
    assert status["size"] == 2
    states = {i["name"]: i["supervisor"] for i in status["instances"]}
    wait_for(lambda: settled.pid(settled.names[2]) == 0 and settled.pid(spare) == 0, 30, "both stopped")
    assert states[settled.names[0]] == "RUNNING"
    settled.cli("scale", "3")
    assert "must be within" in settled.cli("scale", "5", check=False).stderr


def test_reload_during_a_stream_loses_nothing(settled):
    pids = {name: settled.pid(name) for name in settled.names[:3]}
    # A changed worker setting restarts every instance, one at a time.
    settled.write_config(tables={"worker": {"env": {"ASR_LOG_LEVEL": "warning"}}})
    try:
        with Stream(settled.url, concurrency=3, minimum=20) as stream:
            stream.wait_done(5)
            settled.cli("reload")
        assert stream.failures() == [], stream.failures()[:5]
        assert all(settled.pid(name) not in (0, pid) for name, pid in pids.items())
        settled.wait_settled(3)
        assert "ASR_LOG_LEVEL" in (settled.run_dir / "supervisord.conf").read_text()
    finally:
        settled.write_config()


def test_upload_over_the_limit_gets_413_from_nginx(settled):
    response = requests.post(settled.url + "/asr", files={"file": ("big.wav", os.urandom(2 * 1024 * 1024))},
                             timeout=30)
    assert response.status_code == 413
    assert "X-ASR-Worker" not in response.headers  # Nginx answered, no worker saw it
    assert response.json()["code"] == 413 and response.headers["X-Request-ID"]


def test_request_id_is_passed_through_and_logged(settled):
    status, worker = post_clip(settled.url, **{"X-Request-ID": "fleet-test-42"})
    assert status == 200 and worker in settled.names
    response = requests.get(settled.url + "/health", headers={"X-Request-ID": "fleet-test-43"}, timeout=10)
    assert response.headers["X-Request-ID"] == "fleet-test-43"
    wait_for(lambda: "rid=fleet-test-42" in (settled.run_dir / "logs" / "nginx-access.log").read_text(),
             10, "the access log line")
    generated = requests.get(settled.url + "/health", timeout=10).headers["X-Request-ID"]
    assert len(generated) == 32


def test_fleet_status_verify_and_monitor(settled):
    status = settled.status()
    assert status["healthy"] == 3 and len(status["instances"]) == 4
    first = status["instances"][0]
    assert {"state", "weight", "device", "queue_depth", "last_check", "supervisor"} <= set(first)
    verify = settled.cli("verify", "--audio", str(CLIP), check=False, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "[FAIL]" not in verify.stdout and "loopback only" in verify.stdout
    monitor = subprocess.run([str(REPO / "scripts" / "monitor.sh"), "--run-dir", str(settled.run_dir),
                              "--json"], capture_output=True, text=True, timeout=60, env=settled.env)
    assert monitor.returncode == 0, monitor.stdout + monitor.stderr
    assert all(name in monitor.stdout for name in settled.names) and "host: load" in monitor.stdout
    assert list((settled.run_dir / "logs" / "monitor").glob("snapshots-*.jsonl"))
