"""Nothing lost, with real supervisord, Nginx and Gunicorn pocketsphinx
workers (issue 5): kill -9 of a worker, a master or a whole instance mid-
inference, a frozen instance, Nginx reloaded every second, a broken Nginx
config, a rolling restart and workers that cannot load their model. Every
test runs its traffic through the request-ID ledger
(tests/fleet_traffic.py::Ledger), so each request has exactly one outcome, a
200 with a transcript or an explicit refusal with Retry-After, none is lost,
and no worker transcribed one another also did.

The fleet: three active instances and two spares that cannot load their
model (a missing model path; a GPU torch cannot use), a small queue bound
and short timeouts. What the fleet refuses and exposes at its edge:
tests/test_fleet_boundaries.py."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time

import psutil
import pytest
import requests
from fleet_harness import CLIPS, Fleet, fleet_processes
from fleet_traffic import Ledger, Stream
from machine import REPO, instance_processes, listeners, wait_for

# isort: split
from fleet import config as fc
from fleet import nginx as fleet_nginx
from fleet.supervisor import Supervisor

pytestmark = pytest.mark.fleet

TINY_MODEL = REPO / "models" / "tiny-sensevoice"
REQUEST_TIMEOUT = 30


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    # The health poller keeps the harness's settings (2 s timeout, ejected
    # after 3 bad rounds, restarted after 6): tighter ones only make a frozen
    # instance go sooner, and on a loaded 2-core machine they risk ejecting or
    # restarting a healthy one, which the same-process checks below would
    # take for a crash.
    tables = {"worker": {"request_timeout_s": REQUEST_TIMEOUT, "queue_max_items": 6, "graceful_timeout_s": 3,
                         "stopwaitsecs": 6, "startsecs": 20}}
    bad = {3: {"ASR_ENGINE": "funasr", "ASR_MODEL": "/nonexistent/model"},
           4: {"ASR_ENGINE": "funasr", "ASR_MODEL": str(TINY_MODEL), "CUDA_VISIBLE_DEVICES": "99"}}
    fleet = Fleet(tmp_path_factory.mktemp("reliability"), weights=[1] * 5, active=3, tables=tables,
                  instance_env=bad, min_instances=3)
    with fleet.running(3):
        yield fleet


def _running(fleet: Fleet, name: str) -> bool:
    return Supervisor(fleet.resolved).state(name) == "RUNNING"


def _in_flight(port: int) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json().get("in_flight", 0)
    except (requests.RequestException, ValueError):
        return 0


def _no_stray_processes(fleet: Fleet, port: int) -> bool:
    """Every process serving `port` hangs under supervisord, and only the
    current master's tree listens on it: nothing orphaned holds the port."""
    tree = {proc.pid for proc in fleet_processes(fleet.run_dir)}
    serving = {proc.pid for proc in instance_processes(port)}
    holders = {pid for _, pid in listeners().get(port, set())}
    return bool(holders) and serving <= tree and holders <= tree


def _kill_9_round(fleet: Fleet, name: str, target: str) -> None:
    """Kills `target` of the instance mid-inference; returns once a new one
    serves and nothing of the old one is left. (Nginx keeps no passive-health
    mark to wait out: max_fails is 0, the poller does health.)"""
    port = fleet.ports[fleet.names.index(name)]
    wait_for(lambda: _running(fleet, name), 60, f"{name} RUNNING")
    master = psutil.Process(fleet.pid(name))
    [worker] = master.children()
    wait_for(lambda: _in_flight(port) > 0, 30, f"{name} to be inferring", interval=0.05)
    if target == "worker":
        worker.kill()
        wait_for(lambda: {c.pid for c in master.children()} - {worker.pid}, 60, "Gunicorn's new worker")
    else:
        if target == "master":
            master.kill()
        else:
            os.killpg(master.pid, signal.SIGKILL)
        wait_for(lambda: fleet.pid(name) not in (0, master.pid), 60, "Supervisor to restart it")
    wait_for(lambda: _healthy(port), 90, f"{name} healthy again")
    wait_for(lambda: fleet.settled(3), 90, f"{name} back in the upstream")
    wait_for(lambda: _no_stray_processes(fleet, port), 60, f"nothing left of the killed {target} of {name}")


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
    except requests.RequestException:
        return False


def test_kill_9_mid_inference_repeatedly_loses_nothing(settled):
    """Round 1 kills the Gunicorn worker process (its master forks a new
    one), round 2 the master, round 3 the whole instance (Supervisor restarts
    them); each time mid-inference, under load."""
    ledger = Ledger("kill9")
    rounds = [(settled.names[0], "worker"), (settled.names[1], "master"), (settled.names[2], "group")]
    with Stream(settled.url, concurrency=4, minimum=30, ledger=ledger, clips=CLIPS) as stream:
        for name, target in rounds:
            _kill_9_round(settled, name, target)
        stream.wait_done(len(stream.results) + 4, timeout=120)
    statuses = ledger.check(settled.run_dir)
    assert statuses[200] >= 30, statuses


def test_sigstop_requests_end_the_poller_restarts_it_the_rest_serves(settled):
    victim, port = settled.names[1], settled.ports[1]
    wait_for(lambda: _running(settled, victim), 60, f"{victim} RUNNING (past startsecs)")
    ledger = Ledger("sigstop")
    old_pid = settled.pid(victim)
    with Stream(settled.url, concurrency=4, minimum=20, ledger=ledger, clips=CLIPS) as stream:
        wait_for(lambda: _in_flight(port) > 0, 30, "the victim to be inferring", interval=0.05)
        os.killpg(old_pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            wait_for(lambda: settled.pid(victim) not in (0, old_pid), 60, "the poller to restart it")
        finally:
            try:
                os.killpg(old_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        took = time.monotonic() - stopped_at
        served_while_frozen = len(stream.results)
        stream.wait_done(served_while_frozen + 4, timeout=60)
    events = settled.events()
    assert f"{victim}: healthy -> ejected" in events and re.search(rf"{victim}: .*restarting it", events)
    ledger.check(settled.run_dir)
    # Requests the frozen instance held ended within the deadline (retried
    # elsewhere once Supervisor killed it); the others kept being answered.
    slowest = max(o["seconds"] for o in ledger.outcomes.values())
    print(f"\nSIGSTOP: restarted after {took:.1f} s, slowest request {slowest:.1f} s")
    assert slowest < REQUEST_TIMEOUT, slowest
    assert served_while_frozen > 4, f"only {served_while_frozen} answers in {took:.0f} s"
    # Supervisor's stop reached the whole frozen group (killasgroup): nothing left.
    wait_for(lambda: _no_stray_processes(settled, port), 60, "nothing left of the frozen instance")
    settled.wait_settled(3, timeout=90)


def test_nginx_reloaded_every_second_under_load_loses_nothing(settled):
    ledger = Ledger("reload")
    masters = {name: settled.pid(name) for name in settled.names[:3]}
    nginx_pid = fleet_nginx.nginx_master(settled.resolved).pid
    with Stream(settled.url, concurrency=3, minimum=20, ledger=ledger, clips=CLIPS):
        for _ in range(30):
            started = time.monotonic()
            fleet_nginx.nginx_reload(settled.resolved)
            time.sleep(max(0.0, 1 - (time.monotonic() - started)))
    statuses = ledger.check(settled.run_dir)
    assert set(statuses) == {200}, statuses
    assert fleet_nginx.nginx_master(settled.resolved).pid == nginx_pid
    # The same Gunicorn masters: no reload restarted a worker (fleet-events.log says why if one was).
    assert {name: settled.pid(name) for name in masters} == masters, settled.events()[-2000:]


def test_a_broken_nginx_config_is_refused_and_the_old_one_keeps_serving(settled):
    nginx_conf = settled.run_dir / "nginx.conf"
    before = hashlib.sha256(nginx_conf.read_bytes()).hexdigest()
    nginx_pid = fleet_nginx.nginx_master(settled.resolved).pid
    settled.write_config(tables={"nginx": {"worker_processes": "lots"}})
    try:
        result = settled.cli("reload", check=False, timeout=120)
    finally:
        settled.write_config()
    assert result.returncode != 0, result.stdout
    assert "nginx -t" in result.stderr and "worker_processes" in result.stderr, result.stderr
    assert hashlib.sha256(nginx_conf.read_bytes()).hexdigest() == before, "run/nginx.conf was changed"
    # A broken file reaching the reload path directly is refused too, and a
    # HUP that bypasses the check leaves the running Nginx on its old config.
    good = nginx_conf.read_text()
    try:
        nginx_conf.write_text(good + "\nthis is not nginx;\n")
        with pytest.raises(fc.FleetError, match="nginx -t failed"):
            fleet_nginx.nginx_reload(settled.resolved)
        os.kill(nginx_pid, signal.SIGHUP)  # what `nginx -s reload` sends, minus its own check
        wait_for(lambda: f'{nginx_pid}#{nginx_pid}: unknown directive "this"' in
                 (settled.run_dir / "logs" / "nginx-error.log").read_text(), 10, "Nginx to refuse the file")
        ledger = Ledger("broken")
        for clip in CLIPS[:3]:
            ledger.post(settled.url, clip)
    finally:
        nginx_conf.write_text(good)
    assert set(ledger.check(settled.run_dir)) == {200}
    assert fleet_nginx.nginx_master(settled.resolved).pid == nginx_pid


def test_rolling_restart_under_load_has_zero_errors(settled):
    ledger = Ledger("rolling")
    pids = {name: settled.pid(name) for name in settled.names[:3]}
    with Stream(settled.url, concurrency=3, minimum=20, ledger=ledger, clips=CLIPS):
        result = settled.cli("rolling-restart", timeout=400)
    assert "restarted" in result.stdout
    assert set(ledger.check(settled.run_dir)) == {200}, ledger.statuses()
    assert all(settled.pid(name) not in (0, pid) for name, pid in pids.items())
    assert settled.events().count("rolling restart: ") >= 6
    for port in settled.ports[:3]:  # stopasgroup: every old worker and decoder went with its master
        wait_for(lambda: _no_stray_processes(settled, port), 30, f"nothing left of the old {port}")


def test_a_worker_that_cannot_load_its_model_is_fatal_alerted_and_siblings_serve(settled):
    """A missing model directory, and CUDA_VISIBLE_DEVICES naming a GPU torch
    cannot use (on this CPU-only torch: no GPU at all) with the tiny model."""
    bad = {settled.names[3]: "/nonexistent/model", settled.names[4]: "CUDA_VISIBLE_DEVICES='99'"}
    sup = Supervisor(settled.resolved)
    ledger = Ledger("fatal")
    with Stream(settled.url, concurrency=2, minimum=10, ledger=ledger, clips=CLIPS):
        for name in bad:
            sup.start(name)
        wait_for(lambda: all(sup.state(name) == "FATAL" for name in bad), 240, "both to be FATAL")
    assert set(ledger.check(settled.run_dir)) == {200}
    for name, words in bad.items():
        log = (settled.run_dir / "logs" / f"{name}.log").read_text()
        lines = [line for line in log.splitlines() if "model load failed" in line]
        assert lines and all(words in line for line in lines), log[-2000:]
    command = [str(REPO / "scripts" / "monitor.sh"), "--check", "--run-dir", str(settled.run_dir)]
    monitor = subprocess.run(command, capture_output=True, text=True, timeout=60, env=settled.env)
    assert monitor.returncode == 1, monitor.stdout + monitor.stderr
    alerts = (settled.run_dir / "logs" / "alerts.log").read_text()
    for name in bad:
        assert f"ALERT: {name} is FATAL in Supervisor" in monitor.stdout
        assert f"ALERT {name} is FATAL in Supervisor" in alerts
    assert settled.settled(3)
