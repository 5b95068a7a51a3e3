"""Fleet-level guarantees of issue 5, with real supervisord, Nginx and
Gunicorn pocketsphinx workers: every test runs its traffic through the
request-ID ledger (tests/fleet_helpers.py::Ledger), so each request has
exactly one outcome, a 200 with a transcript or an explicit refusal with
Retry-After, none is lost, and no worker transcribed one another also did.

The fleet: three active instances and two spares that cannot load their
model (a missing model path; a GPU torch cannot use), short poller intervals
and timeouts, small queue bound, deadline and client body timeout."""

from __future__ import annotations

import concurrent.futures
import configparser
import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests
from fleet_harness import CLIPS, REPO, Fleet, fleet_processes, instance_processes, listeners, wait_for
from fleet_helpers import Ledger, Stream

# isort: split
import fleet_config as fc
import fleet_nginx
import fleet_render as render
import fleet_state as fs
from fleet_supervisor import Supervisor

pytestmark = pytest.mark.fleet

NGINX = Path(os.environ.get("NGINX", "/usr/sbin/nginx"))
TINY_MODEL = REPO / "models" / "tiny-sensevoice"
REQUEST_TIMEOUT = 30
BODY_TIMEOUT = 2


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if not all(clip.exists() for clip in CLIPS):
        pytest.skip(f"{CLIPS[0].parent} is not present")
    if not NGINX.exists():
        pytest.skip("nginx is not installed (scripts/setup.sh --system)")
    tables = {
        "worker": {"request_timeout_s": REQUEST_TIMEOUT, "queue_max_items": 6, "graceful_timeout_s": 3,
                   "stopwaitsecs": 6, "startsecs": 20},
        "nginx": {"client_body_timeout_s": BODY_TIMEOUT},
        "health": {"interval_s": 0.5, "timeout_s": 1, "eject_after": 2, "restore_after": 2,
                   "restart_after": 4},
    }
    bad = {3: {"ASR_ENGINE": "funasr", "ASR_MODEL": "/nonexistent/model"},
           4: {"ASR_ENGINE": "funasr", "ASR_MODEL": str(TINY_MODEL), "CUDA_VISIBLE_DEVICES": "99"}}
    fleet = Fleet(tmp_path_factory.mktemp("reliability"), weights=[1] * 5, active=3, tables=tables,
                  instance_env=bad, min_instances=3)
    fleet.start()
    try:
        fleet.wait_settled(3)
        fleet.resolved = fc.read_resolved(fleet.run_dir)
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture()
def settled(fleet):
    """Each test starts from three healthy instances, all in the upstream."""
    fleet.wait_settled(3, timeout=90)
    return fleet


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


def _tree_rss_mb(port: int) -> float:
    total = 0
    for proc in instance_processes(port):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


# --- nothing lost ----------------------------------------------------------

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
    assert {name: settled.pid(name) for name in masters} == masters


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


# --- overload ----------------------------------------------------------------

def _open_loop(url: str, ledger: Ledger, rate: float, seconds: float) -> None:
    """Sends `rate` requests per second for `seconds`, whatever comes back."""
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        start = time.monotonic()
        for n in range(int(rate * seconds)):
            time.sleep(max(0.0, start + n / rate - time.monotonic()))
            pool.submit(ledger.post, url, CLIPS[n % len(CLIPS)], REQUEST_TIMEOUT + 30)


def test_five_times_capacity_gets_only_200_or_retry_after_quickly(settled):
    warm = Ledger("capacity")
    began = time.monotonic()
    with Stream(settled.url, concurrency=3, minimum=12, ledger=warm, clips=CLIPS):
        time.sleep(6)
    capacity = len(warm.outcomes) / (time.monotonic() - began)
    warm.check(settled.run_dir)
    pids = {name: settled.pid(name) for name in settled.names[:3]}
    rss_before = {port: _tree_rss_mb(port) for port in settled.ports[:3]}
    ledger = Ledger("overload")
    peak = dict(rss_before)
    sampler_stop = time.monotonic() + 15

    def sample():
        while time.monotonic() < sampler_stop:
            for port in settled.ports[:3]:
                peak[port] = max(peak[port], _tree_rss_mb(port))
            time.sleep(0.5)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _open_loop(settled.url, ledger, rate=5 * capacity, seconds=15)
    sampler.join()
    statuses = ledger.check(settled.run_dir, allowed={200, 429, 503})
    refused = [o["seconds"] for o in ledger.outcomes.values() if o["status"] != 200]
    slowest = max(o["seconds"] for o in ledger.outcomes.values())
    print(f"\ncapacity {capacity:.1f}/s, sent {len(ledger.outcomes)} at 5x: {dict(statuses)}, "
          f"slowest {slowest:.1f} s, RSS MB before {rss_before} peak {peak}")
    assert statuses[200] > 0 and refused, statuses
    assert slowest < REQUEST_TIMEOUT + 10
    assert sorted(refused)[len(refused) // 2] < 2.0, "refusals are not quick"
    assert {name: settled.pid(name) for name in pids} == pids, "a worker crashed"
    assert all(peak[port] - rss_before[port] < 300 for port in peak), (rss_before, peak)


def test_per_client_rate_limit_answers_429_with_retry_after(settled):
    assert "limit_req" not in (settled.run_dir / "nginx.conf").read_text()  # off by default
    settled.write_config(tables={"nginx": {"rate_limit_per_s": 1, "rate_limit_burst": 2}})
    try:
        settled.cli("reload", timeout=120)
        assert "limit_req_status 429;" in (settled.run_dir / "nginx.conf").read_text()
        ledger = Ledger("ratelimit")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda clip: ledger.post(settled.url, clip), CLIPS[:4] * 2))
    finally:
        settled.write_config()
        settled.cli("reload", timeout=120)
    statuses = ledger.check(settled.run_dir, allowed={200, 429})
    assert statuses[429] >= 3 and statuses[200] >= 1, statuses
    limited = [o for o in ledger.outcomes.values() if o["status"] == 429]
    assert all(o["retry_after"] == "1" and o["code"] == 429 and o["worker"] is None for o in limited)
    logged = ledger.worker_logs(settled.run_dir)
    assert not any(o["id"] in logged for o in limited), "a worker saw a rate-limited request"
    assert "limit_req" not in (settled.run_dir / "nginx.conf").read_text()


# --- bad input at the fleet level ------------------------------------------------

def test_a_slow_upload_gets_408_from_nginx_and_no_worker_sees_it(settled):
    rid = f"slow-{uuid.uuid4().hex[:8]}"
    with socket.create_connection(("127.0.0.1", settled.front_port), timeout=10) as sock:
        sock.sendall(f"POST /asr HTTP/1.1\r\nHost: fleet\r\nX-Request-ID: {rid}\r\n"
                     "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 200000\r\n\r\n"
                     "--x\r\n".encode())
        started = time.monotonic()
        sock.settimeout(BODY_TIMEOUT + 20)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        took = time.monotonic() - started
    # Nginx ends the request after client_body_timeout; for a body timeout it
    # closes the connection without writing a response (the 408 is logged).
    assert BODY_TIMEOUT - 0.5 < took < BODY_TIMEOUT + 10, took
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    access = settled.run_dir / "logs" / "nginx-access.log"
    wait_for(lambda: f"rid={rid}" in access.read_text(), 10, "the access log line")
    [line] = [line for line in access.read_text().splitlines() if f"rid={rid}" in line]
    assert '"POST /asr HTTP/1.1" 408 ' in line and "upstream=-" in line, line
    assert rid not in "".join(p.read_text() for p in (settled.run_dir / "logs").glob("asr-*.log"))


# --- security ------------------------------------------------------------------

def test_only_the_nginx_port_listens_and_the_supervisor_socket_is_private(settled):
    run = settled.run_dir
    supervisord = configparser.RawConfigParser(strict=False)
    supervisord.read(run / "supervisord.conf")
    assert supervisord.get("unix_http_server", "chmod") == "0700"
    assert not any(section.startswith("inet_http_server") for section in supervisord.sections())
    assert (run / "supervisor.sock").stat().st_mode & 0o777 == 0o700
    assert run.stat().st_mode & 0o777 == 0o700
    for name in settled.names:
        assert 'ASR_HOST="127.0.0.1"' in supervisord.get(f"program:{name}", "environment")
    pids = {proc.pid: proc for proc in fleet_processes(run)}
    expected = {settled.front_port: {"127.0.0.1"}, **{port: {"127.0.0.1"} for port in settled.ports[:3]}}
    seen: dict[int, set[str]] = {}
    for port, holders in listeners().items():
        for address, pid in holders:
            if pid in pids:
                seen.setdefault(port, set()).add(address)
    assert seen == expected, seen
    supervisord_pid = int((run / "supervisord.pid").read_text())
    assert not [c for c in psutil.Process(supervisord_pid).net_connections("inet")]


def test_nothing_runs_as_another_user_or_as_root_unless_started_by_root(settled, tmp_path):
    uids = {proc.pid: proc.uids().effective for proc in fleet_processes(settled.run_dir)}
    assert set(uids.values()) == {os.geteuid()}, uids  # no process changes user
    if os.geteuid() != 0:
        assert 0 not in uids.values()
        return
    # Started by root (as in CI containers): Nginx keeps its workers as the
    # invoking user instead of nobody; as a normal user there is no `user`
    # directive at all (an unprivileged master cannot switch users).
    resolved = dict(settled.resolved, run_dir=str(tmp_path), log_dir=str(tmp_path))
    state = fs.fresh_state(resolved)
    as_root = render.render_text("nginx/nginx.conf.j2", dict(resolved, is_root=True, user="asr", group="asr"),
                                 state)
    as_user = render.render_text("nginx/nginx.conf.j2", dict(resolved, is_root=False), state)
    assert "\nuser asr asr;" in as_root
    assert "\nuser " not in as_user
    programs = render.render_text("supervisor/programs.conf.j2", resolved, state)
    assert "\nuser=" not in programs  # local mode: every program runs as whoever started supervisord
