"""A real fleet (supervisord, Nginx, Gunicorn workers on the embedded
engine, the health poller) in its own run folder on free ports: loopback
only, requests follow the weights, kill -9 and a frozen instance lose
nothing, scaling and reload under a stream lose nothing, Nginx refuses what
is too big, request IDs pass through, and status, verify and monitor report it.
The fleet file and its rendering without a fleet: tests/test_fleet_file.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import psutil
import pytest
import requests
from fleet_harness import CLIP, Fleet
from fleet_traffic import Stream, post_clip
from machine import REPO, wait_for

pytestmark = pytest.mark.fleet
# How far each instance's share of the requests may be from its weight's.
# Nginx keeps a round-robin position per worker process, and on a loaded
# machine a request may be retried on another instance; 15% still tells the
# 1:2:1 weights from equal ones (a third off each share).
WEIGHT_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    # Weights 1:2:1 on three active instances, a fourth spare for scaling.
    # Four requests each at most: the weights decide until an instance is
    # full (max_conns), and the tests' three clients never fill one.
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), weights=[1, 2, 1, 1], active=3,
                  tables={"worker": {"max_concurrent": 4}})
    # Shares that follow the weights exactly are round robin's promise; least_conn (the default)
    # weighs open requests too. The other fleet tests run the default.
    fleet.top["balancing"] = "round_robin"
    fleet.write_config()
    with fleet.running(3):
        yield fleet


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
        assert abs(counts.get(name, 0) - expected) <= WEIGHT_TOLERANCE * expected, counts


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
