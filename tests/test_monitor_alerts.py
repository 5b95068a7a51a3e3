"""The fleet monitor's alerts (scripts/monitor.py) from the inputs it reads:
a rendered run folder (fleet.json, state.json), each instance's /health and
/stats (small HTTP servers on loopback ports, answering what a worker would),
supervisord's XML-RPC (a fake one on a unix socket, or none: supervisord
down) and nvidia-smi (a fake one). Checked: the alert texts for p95 and error
rate over their thresholds (and not at them), FATAL, down and loading
instances and supervisord down; the exit status with and without --check;
alerts.log; and the --json snapshot's figures."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import shutil
import socketserver
import tempfile
import threading
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

import fleet_harness  # noqa: F401 - puts scripts/ on sys.path, for the fleet's modules below
import pytest
from machine import REPO, fake_nvidia_smi

# isort: split
from fleet import config as fc
from fleet import render
from fleet import state as fs

pytestmark = pytest.mark.unit

spec = importlib.util.spec_from_file_location("fleet_monitor", REPO / "scripts" / "monitor.py")
monitor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(monitor)


class _Worker(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        health, stats = self.server.answers
        body = {"/health": health, "/stats": stats}.get(self.path)
        status = 404 if body is None else 200 if self.path != "/health" or body["status"] == "ok" else 503
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _Rpc(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)
    disable_nagle_algorithm = False  # TCP_NODELAY: not on a unix socket

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass


class FakeSupervisord(socketserver.ThreadingMixIn, socketserver.UnixStreamServer, SimpleXMLRPCDispatcher):
    """supervisord's getAllProcessInfo over a unix socket, as SupervisorTransport speaks it."""

    daemon_threads = True

    def __init__(self, path: str, states: dict[str, str]):
        self.logRequests = False
        SimpleXMLRPCDispatcher.__init__(self, allow_none=True, encoding=None)
        socketserver.UnixStreamServer.__init__(self, path, _Rpc)
        self.register_function(lambda: [{"name": n, "statename": s} for n, s in states.items()],
                               "supervisor.getAllProcessInfo")


@contextlib.contextmanager
def serving(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def health(status="ok", queue=0, in_flight=0) -> dict:
    return {"status": status, "queue_depth": queue, "in_flight": in_flight, "model": "tiny"}


def stats(total=0, failed=0, p95=0.0, rtf=0.0) -> dict:
    return {"total_requests": total, "failed_requests": failed, "real_time_factor": rtf,
            "latency_ms": {"p50": p95 / 2, "p90": p95, "p95": p95, "p99": p95}}


@contextlib.contextmanager
def fleet(tmp_path: Path, answers: list[tuple[dict, dict] | None], supervisor: list[str] | None):
    """A rendered fleet of len(answers) instances, the first two active (the
    rest spares); instance i answers answers[i] (None: nothing listens) and is
    supervisor[i] to supervisord (None: supervisord down). Yields (run dir, names)."""
    with contextlib.ExitStack() as stack:
        servers = []
        for answer in answers:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
            server.answers = answer
            servers.append(server)
        ports = [s.server_address[1] for s in servers]
        for server, answer in zip(servers, answers):
            if answer is None:
                server.server_close()  # its port stays free: nothing answers there
            else:
                stack.enter_context(serving(server))
        names = [f"asr-{port}" for port in ports]
        text = ("instances = 2\nmin_instances = 1\n[monitor]\np95_alert_ms = 500\nerror_rate_alert = 0.1\n"
                + "".join(f"[[instance]]\nport = {port}\n" for port in ports))
        (tmp_path / "fleet.toml").write_text(text)
        run = tmp_path / "run"
        resolved = fc.load(tmp_path / "fleet.toml", run, gpus=0, cores=2)
        # A unix socket path must stay short: not under pytest's long tmp_path.
        sockets = Path(tempfile.mkdtemp(prefix="mon-"))
        stack.callback(shutil.rmtree, sockets, ignore_errors=True)
        resolved["supervisor_url"] = f"unix://{sockets}/supervisor.sock"
        render.render_all(resolved, fs.read_state(run, resolved))
        if supervisor is not None:
            states = dict(zip(names, supervisor))
            stack.enter_context(serving(FakeSupervisord(str(sockets / "supervisor.sock"), states)))
        yield run, names


def alert_lines(out: str) -> list[str]:
    return [line[len("ALERT: "):] for line in out.splitlines() if line.startswith("ALERT: ")]


def test_p95_error_rate_and_fatal_alerts_and_the_snapshot(tmp_path, monkeypatch, capsys):
    fake_nvidia_smi(tmp_path, monkeypatch, "echo '0, NVIDIA H200, 37, 1024, 143771'")
    answers = [(health(queue=3, in_flight=2), stats(total=100, failed=20, p95=300.0, rtf=0.25)),
               (health(in_flight=1), stats(total=10, failed=5, p95=1234.4, rtf=0.5)),
               None]
    with fleet(tmp_path, answers, ["RUNNING", "RUNNING", "FATAL"]) as (run, (a, b, spare)):
        assert monitor.main(["--run-dir", str(run), "--check", "--json"]) == 1
    expected = [f"{a} error rate 20.0% > 10.0%",  # b's 10 requests are too few to judge its rate
                f"{b} p95 1234 ms > 500 ms",
                f"{spare} is FATAL in Supervisor: it cannot start (see logs/{spare}.log)"]
    out = capsys.readouterr().out
    assert alert_lines(out) == expected
    assert "GPU 0 NVIDIA H200: 37% busy, 1024/143771 MiB" in out
    logged = (run / "logs" / "alerts.log").read_text().splitlines()
    assert sorted(line.split(" ALERT ", 1)[1] for line in logged) == sorted(expected)
    (snapshot_file,) = (run / "logs" / "monitor").glob("snapshots-*.jsonl")
    (line,) = snapshot_file.read_text().splitlines()
    snap = json.loads(line)
    assert snap["supervisord"] is True and snap["alerts"] == expected
    rows = {i["name"]: i for i in snap["instances"]}
    assert (rows[a]["role"], rows[a]["supervisor"], rows[a]["health"]) == ("active", "RUNNING", "ok")
    assert (rows[a]["requests"], rows[a]["errors"], rows[a]["p95_ms"], rows[a]["rtf"]) == (100, 20, 300.0, 0.25)
    assert (rows[a]["queue_depth"], rows[a]["in_flight"], rows[a]["model"]) == (3, 2, "tiny")
    assert (rows[b]["p95_ms"], rows[b]["rtf"]) == (1234.4, 0.5)
    assert (rows[spare]["role"], rows[spare]["supervisor"], rows[spare]["health"]) == ("spare", "FATAL", "-")
    assert snap["totals"] == {"active": 2, "healthy": 2, "requests": 110, "errors": 25,
                              "error_rate": round(25 / 110, 4), "in_flight": 3, "queue_depth": 3,
                              "max_p95_ms": 1234.4}
    assert snap["thresholds"] == {"p95_alert_ms": 500, "error_rate_alert": 0.1}
    assert snap["gpus"] == [{"index": "0", "name": "NVIDIA H200", "util_pct": "37", "mem_used_mib": "1024",
                             "mem_total_mib": "143771"}]


def test_supervisord_down_and_instances_down_or_loading(tmp_path, capsys):
    answers = [(health(status="loading"), stats()), None, None]
    with fleet(tmp_path, answers, None) as (run, (loading, down, _spare)):
        assert monitor.main(["--run-dir", str(run), "--check"]) == 1
        expected = ["supervisord is not running: the fleet is down",
                    f"{loading} is loading (supervisor -)", f"{down} is down (supervisor -)"]
        assert alert_lines(capsys.readouterr().out) == expected  # a spare that is down is no alert
        # A person glancing at the table gets exit 0; the alerts are logged all the same.
        assert monitor.main(["--run-dir", str(run)]) == 0
    logged = (run / "logs" / "alerts.log").read_text().splitlines()
    assert sorted(line.split(" ALERT ", 1)[1] for line in logged) == sorted(expected * 2)


def test_figures_at_the_thresholds_raise_nothing(tmp_path, capsys):
    # p95 exactly at 500 ms and 2 errors in 20 (exactly 10%): alerts fire above, not at.
    # 19 of 19 failed: too few requests to judge a rate.
    answers = [(health(), stats(total=20, failed=2, p95=500.0)), (health(), stats(total=19, failed=19)),
               None]
    with fleet(tmp_path, answers, ["RUNNING", "RUNNING", "STOPPED"]) as (run, _):
        assert monitor.main(["--run-dir", str(run), "--check", "--json"]) == 0
    out = capsys.readouterr().out
    assert "ALERT" not in out and "error rate 53.85%" in out  # 21 of the fleet's 39 requests
    assert not (run / "logs" / "alerts.log").exists()
    (snapshot_file,) = (run / "logs" / "monitor").glob("snapshots-*.jsonl")
    snap = json.loads(snapshot_file.read_text())
    assert snap["alerts"] == [] and snap["supervisord"] is True
    assert [i["supervisor"] for i in snap["instances"]] == ["RUNNING", "RUNNING", "STOPPED"]


def test_a_run_folder_never_rendered_is_exit_2(tmp_path, capsys):
    assert monitor.main(["--run-dir", str(tmp_path / "none"), "--check"]) == 2
    assert "fleet.json is missing" in capsys.readouterr().err
