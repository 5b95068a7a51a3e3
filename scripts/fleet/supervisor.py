"""Process control: supervisord over its unix socket, and instance readiness
through each worker's /health."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import subprocess
import time
import urllib.error
import urllib.request
import xmlrpc.client

from supervisor.xmlrpc import SupervisorTransport

STOPPED_STATES = {"STOPPED", "EXITED"}


class Supervisor:
    """supervisord's XML-RPC interface over the fleet's unix socket."""

    def __init__(self, resolved: dict):
        self.url = resolved["supervisor_url"]
        # The longest a stop can take before Supervisor kills the group.
        self.stop_wait_s = resolved["worker"]["stopwaitsecs"] + 5

    @property
    def rpc(self):
        """A fresh connection per call: the transport is neither reusable after
        an error nor thread-safe, and a unix socket connect costs nothing."""
        transport = SupervisorTransport(None, None, serverurl=self.url)
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def running(self) -> bool:
        try:
            return self.rpc.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return False

    def states(self) -> dict[str, dict]:
        return {info["name"]: info for info in self.rpc.getAllProcessInfo()}

    def state(self, name: str) -> str:
        try:
            return self.rpc.getProcessInfo(name)["statename"]
        except xmlrpc.client.Fault:
            return "UNKNOWN"

    def start(self, name: str) -> None:
        """Starts without waiting for startsecs; ALREADY_STARTED is fine. An
        instance still STOPPING (the poller restarting it) is waited for
        first: Supervisor does not start a process that has not exited, and
        the start would be lost, leaving it stopped."""
        deadline = time.monotonic() + self.stop_wait_s
        while self.state(name) == "STOPPING" and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            self.rpc.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise

    def stop(self, name: str, wait: bool = True) -> None:
        try:
            self.rpc.stopProcess(name, wait)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString and "BAD_NAME" not in fault.faultString:
                raise


def ctl(resolved: dict, *words: str) -> subprocess.CompletedProcess:
    """supervisorctl against the fleet's supervisord."""
    return subprocess.run([f"{resolved['bin_dir']}/supervisorctl", "-c", resolved["supervisor_conf"], *words],
                          capture_output=True, text=True)


def probe(port: int, timeout: float) -> tuple[str, dict | None, str]:
    """One /health call: ("ok" | "loading" | "timeout" | "fail", body, error).
    "timeout" (no answer in time) is kept apart from "fail" (refused, or an
    error status): a saturated machine answers late, a dead one not at all."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as response:
            return "ok", json.loads(response.read()), ""
    except urllib.error.HTTPError as error:
        try:
            body = json.loads(error.read())
        except (ValueError, OSError):
            body = None
        status = (body or {}).get("status")
        outcome = "loading" if status == "loading" else "fail"
        return outcome, body, f"HTTP {error.code} {status or ''}".strip()
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        outcome = "timeout" if isinstance(reason, TimeoutError) else "fail"
        return outcome, None, str(reason) or type(error).__name__


def probe_all(instances: list[dict], timeout: float) -> dict[str, tuple]:
    """Probes in parallel: one frozen instance never delays the others."""
    if not instances:
        return {}
    with concurrent.futures.ThreadPoolExecutor(len(instances)) as pool:
        results = pool.map(lambda inst: probe(inst["port"], timeout), instances)
        return {inst["name"]: result for inst, result in zip(instances, results)}


def wait_healthy(resolved: dict, instances: list[dict], timeout: float, sup: Supervisor | None = None,
                 progress: bool = False) -> list[str]:
    """Waits until each instance's /health is 200; returns the names still not ok
    (at once when every one still pending is FATAL in Supervisor)."""
    pending = {inst["name"]: inst for inst in instances}
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while pending and time.monotonic() < deadline:
        for name, (outcome, _, _) in probe_all(list(pending.values()), 2).items():
            if outcome == "ok":
                pending.pop(name)
        if sup is not None and pending:
            fatal = [n for n in pending if sup.state(n) in ("FATAL", "BACKOFF")]
            if fatal and all(sup.state(n) == "FATAL" for n in fatal):
                return sorted(pending)
        if progress and pending and time.monotonic() - last_print > 10:
            print(f"fleet: waiting for {', '.join(sorted(pending))} to load ...", flush=True)
            last_print = time.monotonic()
        if pending:
            time.sleep(0.25)
    return sorted(pending)
