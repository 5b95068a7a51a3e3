"""Fleet operations: Supervisor, health probes, Nginx reloads, scaling, the poller.

Changes to the upstream go through `change_state`, under run/state.lock, and
long operations (scale, rolling reload, autoscaling) hold run/action.lock, so
the CLI and the health poller never interleave.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path

import psutil
from supervisor.xmlrpc import SupervisorTransport

import fleet_config as fc

STOPPED_STATES = {"STOPPED", "EXITED"}


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def log_event(resolved: dict, message: str) -> None:
    """Prints a timestamped line and appends it to logs/fleet-events.log."""
    line = f"{now_iso()} {message}"
    print(line, flush=True)
    try:
        with open(Path(resolved["log_dir"]) / "fleet-events.log", "a") as handle:
            handle.write(line + "\n")
    except OSError:
        pass


class Supervisor:
    """supervisord's XML-RPC interface over the fleet's unix socket."""

    def __init__(self, resolved: dict):
        self.url = resolved["supervisor_url"]

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
        """Starts without waiting for startsecs; ALREADY_STARTED is fine."""
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


def probe(port: int, timeout: float) -> tuple[str, dict | None, str]:
    """One /health call: ("ok" | "loading" | "fail", body, error)."""
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
        return "fail", None, str(reason) or type(error).__name__


def probe_all(instances: list[dict], timeout: float) -> dict[str, tuple]:
    """Probes in parallel: one frozen instance never delays the others."""
    if not instances:
        return {}
    with concurrent.futures.ThreadPoolExecutor(len(instances)) as pool:
        results = pool.map(lambda inst: probe(inst["port"], timeout), instances)
        return {inst["name"]: result for inst, result in zip(instances, results)}


# --- Nginx and the upstream ---------------------------------------------------

def nginx_master(resolved: dict) -> psutil.Process | None:
    try:
        return psutil.Process(int(Path(resolved["nginx_pid_file"]).read_text().strip()))
    except (OSError, ValueError, psutil.Error):
        return None


def nginx_reload(resolved: dict) -> None:
    """Checks the rendered config, then reloads Nginx gracefully (old workers
    finish their requests; new ones use the new upstream). Returns once the
    new workers run: the master stops the old ones from accepting right after,
    so a caller that just ejected an instance can rely on it."""
    test = subprocess.run(resolved["nginx_cmd"] + ["-t", "-q"], capture_output=True, text=True)
    if test.returncode != 0:
        raise fc.FleetError(f"nginx -t failed: {test.stderr.strip()}")
    master = nginx_master(resolved)
    if master is None:
        return  # not running yet: it reads the new files when it starts
    try:
        before = {child.pid for child in master.children()}
    except psutil.Error:
        before = set()
    subprocess.run(resolved["nginx_cmd"] + ["-s", "reload"], check=True, capture_output=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _old_workers_retired(master, before):
        time.sleep(0.02)
    time.sleep(0.02)  # the title changes just before the listening sockets close


def _old_workers_retired(master: psutil.Process, old: set[int]) -> bool:
    """New workers run and every old one is gone or "shutting down" (the
    title Nginx gives a worker that stopped accepting)."""
    try:
        children = master.children()
    except psutil.Error:
        return True
    if not {child.pid for child in children} - old:
        return False
    for child in children:
        if child.pid in old:
            try:
                if "shutting down" not in " ".join(child.cmdline()):
                    return False
            except psutil.Error:
                pass
    return True


def change_state(resolved: dict, change) -> dict:
    """Applies change(state) under the state lock, re-renders the upstream and
    reloads Nginx when the upstream changed; returns the new state."""
    run_dir = Path(resolved["run_dir"])
    with fc.locked(run_dir):
        state = fc.read_state(run_dir, resolved)
        before = fc.render_text("nginx/upstream.conf.j2", resolved, state)
        change(state)
        fc.write_state(run_dir, state)
        if fc.render_text("nginx/upstream.conf.j2", resolved, state) != before:
            fc.render_upstream(resolved, state)
            nginx_reload(resolved)
        return state


# --- waiting, draining, scaling ------------------------------------------------

def wait_healthy(resolved: dict, instances: list[dict], timeout: float, sup: Supervisor | None = None,
                 progress: bool = False) -> list[str]:
    """Waits until each instance's /health is 200; returns the names still not ok."""
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


def drain(resolved: dict, inst: dict) -> bool:
    """After the instance left the upstream: waits until it holds no request."""
    time.sleep(0.5)  # old Nginx workers may still be handing it a request
    deadline = time.monotonic() + resolved["scaling"]["drain_timeout_s"]
    idle_probes = 0
    while time.monotonic() < deadline:
        outcome, body, _ = probe(inst["port"], 2)
        if outcome == "fail" and body is None:
            return True  # nothing listening: nothing to drain
        idle = body is not None and body.get("in_flight", 0) == 0 and body.get("queue_depth", 0) == 0
        idle_probes = idle_probes + 1 if idle else 0
        if idle_probes >= 2:
            return True
        time.sleep(0.25)
    return False


def scale_to(resolved: dict, size: int, why: str = "manual") -> None:
    """Grows (start, wait ready, add, reload) or shrinks (remove, reload,
    drain, stop) the active set to `size` instances."""
    low, high = resolved["min_instances"], resolved["max_instances"]
    if not low <= size <= high:
        raise fc.FleetError(f"scale to {size}: must be within min_instances {low} and max_instances "
                            f"{high} (edit the fleet file to change them, then make reload)")
    run_dir = Path(resolved["run_dir"])
    sup = Supervisor(resolved)
    with fc.locked(run_dir, "action"):
        current = fc.read_state(run_dir, resolved)["size"]
        pool = resolved["instances"]
        if size > current:
            new = pool[current:size]
            for inst in new:
                sup.start(inst["name"])
            names = ", ".join(i["name"] for i in new)
            log_event(resolved, f"scale {current} -> {size} ({why}): starting {names}")
            failed = wait_healthy(resolved, new, resolved["health"]["max_load_s"], sup)
            if failed:
                for name in failed:
                    sup.stop(name)
                raise fc.FleetError(f"scale up failed: {', '.join(failed)} never became healthy")

            def grow(state):
                state["size"], state["last_scale_at"] = size, time.time()
            change_state(resolved, grow)
            log_event(resolved, f"scale {current} -> {size}: {names} in the upstream")
        elif size < current:
            gone = pool[size:current]

            def shrink(state):
                state["size"], state["last_scale_at"] = size, time.time()
                for inst in gone:
                    state["ejected"].pop(inst["name"], None)
            change_state(resolved, shrink)
            log_event(resolved, f"scale {current} -> {size} ({why}): "
                                f"{', '.join(i['name'] for i in gone)} out of the upstream, draining")
            for inst in gone:
                if not drain(resolved, inst):
                    log_event(resolved, f"{inst['name']}: drain timed out; stopping it anyway")
                sup.stop(inst["name"])
            log_event(resolved, f"scale {current} -> {size}: {', '.join(i['name'] for i in gone)} stopped")


def _program_sections(path: Path) -> dict[str, list[str]]:
    """[program:x] bodies without comments and autostart: the settings whose
    change needs a restart (autostart only matters when supervisord starts)."""
    sections: dict[str, list[str]] = {}
    current = None
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[program:"):
            current = sections.setdefault(line[9:-1], [])
        elif line.startswith("["):
            current = None
        elif current is not None and line and not line.startswith(("#", ";", "autostart=")):
            current.append(line)
    return sections


def rolling_reload(old: dict, new: dict) -> None:
    """Applies a new fleet file to the running fleet without dropping requests:
    changed instances restart one at a time, each out of the upstream while
    it drains and reloads; Nginx reloads gracefully."""
    run_dir = Path(new["run_dir"])
    sup = Supervisor(new)
    old_sections = _program_sections(Path(new["supervisor_conf"]))
    by_name = {inst["name"]: inst for inst in old["instances"] + new["instances"]}
    with fc.locked(run_dir, "action"):
        with fc.locked(run_dir):
            old_size = fc.read_state(run_dir, old)["size"]
            state = fc.read_state(run_dir, new)
            states = sup.states()
            new_active = [inst["name"] for inst in new["instances"][:state["size"]]]
            state["ejected"] = {k: v for k, v in state["ejected"].items() if k in new_active}
            state["maintenance"] = [n for n in new_active if states.get(n, {}).get("statename") != "RUNNING"]
            fc.render_all(new, state)
            fc.write_state(run_dir, state)
        new_sections = _program_sections(Path(new["supervisor_conf"]))
        [[added, changed, removed]] = sup.rpc.reloadConfig()
        nginx_reload(new)
        log_event(new, f"reload: added {added or '-'}, changed {changed or '-'}, removed {removed or '-'}")
        old_active = [inst["name"] for inst in old["instances"][:old_size]]
        for name in removed + [n for n in old_active if n not in new_active and n not in removed]:
            if name in by_name and name in old_active:
                drain(new, by_name[name])
            sup.stop(name)
            if name in removed:
                sup.rpc.removeProcessGroup(name)
        for name in added:
            sup.rpc.addProcessGroup(name)
        for name in changed:
            if old_sections.get(name) == new_sections.get(name):
                continue  # only autostart or comments differ
            active = name in new_active
            if active:
                change_state(new, lambda s: s["maintenance"].append(name))
                drain(new, by_name[name])
            sup.stop(name)
            sup.rpc.removeProcessGroup(name)
            sup.rpc.addProcessGroup(name)  # starts it again when autostart=true
            if active:
                # Back in the upstream before the next one leaves it.
                if wait_healthy(new, [by_name[name]], new["health"]["max_load_s"], sup):
                    raise fc.FleetError(f"reload: {name} did not become healthy with its new settings "
                                        "(see make logs); the rest of the fleet was left as it was")
                change_state(new, lambda s: s["maintenance"].remove(name))
            log_event(new, f"reload: {name} restarted with its new settings")
        pending = [by_name[n] for n in fc.read_state(run_dir, new)["maintenance"]]
        for inst in pending:
            sup.start(inst["name"])
        failed = wait_healthy(new, pending, new["health"]["max_load_s"], sup)
        change_state(new, lambda s: s.update(maintenance=[]))
        if failed:
            raise fc.FleetError(f"reload: {', '.join(failed)} did not become healthy (see make logs)")


# --- the health poller -------------------------------------------------------

class Autoscaler:
    """Naive scaling: a metric above the high mark for high_for_s grows the
    fleet by one; below the low mark for low_for_s shrinks it by one."""

    def __init__(self, knobs: dict):
        self.knobs = knobs
        self.high_since: float | None = None
        self.low_since: float | None = None

    def observe(self, now: float, value: float | None, size: int, low: int, high: int,
                last_scale_at: float) -> str | None:
        k = self.knobs
        if value is None or value > k["high_mark"]:
            self.low_since = None
        if value is None or value < k["low_mark"]:
            self.high_since = None
        if value is None:
            return None
        if value > k["high_mark"] and self.high_since is None:
            self.high_since = now
        elif value < k["low_mark"] and self.low_since is None:
            self.low_since = now
        elif k["low_mark"] <= value <= k["high_mark"]:
            self.high_since = self.low_since = None
        if now - last_scale_at < k["cooldown_s"]:
            return None
        if self.high_since is not None and now - self.high_since >= k["high_for_s"] and size < high:
            self.high_since = None
            return "up"
        if self.low_since is not None and now - self.low_since >= k["low_for_s"] and size > low:
            self.low_since = None
            return "down"
        return None


class Track:
    """What the poller remembers about one instance."""

    def __init__(self):
        self.fails = self.oks = 0
        # Failures that are not "loading": only these (or a load that never
        # ends) justify a restart; a big model loading slowly does not.
        self.hard_fails = 0
        self.loading_since: float | None = None
        self.ever_healthy = False
        self.first_seen = time.monotonic()
        self.last_restart = 0.0
        self.last_fatal_start = 0.0
        self.outcome, self.body, self.error, self.checked = "unknown", None, "", ""


class Poller:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.mtime = 0.0
        self.tracks: dict[str, Track] = {}
        self.action: threading.Thread | None = None
        self.stopping = False
        self._load()

    def _load(self) -> None:
        mtime = (self.run_dir / "fleet.json").stat().st_mtime
        if mtime != self.mtime:
            self.resolved = fc.read_resolved(self.run_dir)
            self.mtime = mtime
            self.sup = Supervisor(self.resolved)
            self.scaler = Autoscaler(self.resolved["scaling"])

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        log_event(self.resolved, f"poller: watching {len(self.resolved['instances'])} instances "
                                 f"every {self.resolved['health']['interval_s']} s")
        while not self.stopping:
            started = time.monotonic()
            try:
                self.tick()
            except Exception as error:  # the poller must outlive any one bad tick
                log_event(self.resolved, f"poller: tick failed: {type(error).__name__}: {error}")
            rest = self.resolved["health"]["interval_s"] - (time.monotonic() - started)
            end = time.monotonic() + max(rest, 0.05)
            while not self.stopping and time.monotonic() < end:
                time.sleep(min(0.1, max(end - time.monotonic(), 0)))
        log_event(self.resolved, "poller: stopped")

    def tick(self) -> None:
        self._load()
        resolved, health = self.resolved, self.resolved["health"]
        state = fc.read_state(self.run_dir, resolved)
        try:
            sup_states = {n: i["statename"] for n, i in self.sup.states().items()}
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            sup_states = {}
        active = resolved["instances"][:state["size"]]
        watched = [i for i in resolved["instances"] if i in active or sup_states.get(i["name"]) == "RUNNING"]
        results = probe_all(watched, health["timeout_s"])
        now = time.monotonic()
        eject, restore = {}, []
        for inst in active:
            name = inst["name"]
            track = self.tracks.setdefault(name, Track())
            track.outcome, track.body, track.error = results[name]
            track.checked = now_iso()
            sup_state = sup_states.get(name, "UNKNOWN")
            if name in state["maintenance"]:
                continue
            track.hard_fails = track.hard_fails + 1 if track.outcome == "fail" else 0
            if track.outcome != "loading":
                track.loading_since = None
            elif track.loading_since is None:
                track.loading_since = now
            if track.outcome == "ok":
                track.oks, track.fails, track.ever_healthy = track.oks + 1, 0, True
            elif track.ever_healthy or now - track.first_seen > health["max_load_s"]:
                track.fails, track.oks = track.fails + 1, 0
            if name not in state["ejected"] and track.fails >= health["eject_after"]:
                eject[name] = f"unhealthy: {track.fails} failed checks, last: {track.error}"
            if name in state["ejected"] and track.oks >= health["restore_after"]:
                restore.append(name)
            self._restart_or_start(inst, track, sup_state, now)
        if eject or restore:
            def apply(s):
                s["ejected"].update(eject)
                for name in restore:
                    s["ejected"].pop(name, None)
            change_state(resolved, apply)
            for name, reason in eject.items():
                log_event(resolved, f"{name}: healthy -> ejected from the upstream ({reason})")
            for name in restore:
                log_event(resolved, f"{name}: ejected -> healthy, back in the upstream")
            state = fc.read_state(self.run_dir, resolved)
        self._autoscale(state, active)
        self._write_status(state, sup_states, results)

    def _restart_or_start(self, inst: dict, track: Track, sup_state: str, now: float) -> None:
        name, health = inst["name"], self.resolved["health"]
        if sup_state != "RUNNING":
            track.hard_fails = 0  # starting or stopping: Supervisor is on it
        if sup_state in STOPPED_STATES:
            log_event(self.resolved, f"{name}: supervisor says {sup_state}; starting it")
            self.sup.start(name)
            track.last_restart = now
        elif sup_state == "FATAL" and now - track.last_fatal_start > 60:
            log_event(self.resolved, f"{name}: FATAL (failed to start); trying again")
            track.last_fatal_start = now
            self.sup.start(name)
        elif sup_state == "RUNNING" and (
                track.hard_fails >= health["restart_after"]
                or (track.loading_since is not None and now - track.loading_since > health["max_load_s"])):
            log_event(self.resolved, f"{name}: {track.fails} failed checks ({track.error}); restarting it")
            track.last_restart, track.hard_fails, track.loading_since = now, 0, None
            self.sup.stop(name, wait=False)  # the next tick starts it once stopped

    def _autoscale(self, state: dict, active: list[dict]) -> None:
        knobs = self.resolved["scaling"]
        if not knobs["enabled"] or (self.action is not None and self.action.is_alive()):
            return
        values = [t.body.get(knobs["metric"], 0) for inst in active
                  if (t := self.tracks.get(inst["name"])) and t.outcome == "ok" and t.body
                  and inst["name"] not in state["ejected"]]
        value = sum(values) / len(values) if values else None
        decision = self.scaler.observe(time.time(), value, state["size"], self.resolved["min_instances"],
                                       self.resolved["max_instances"], state["last_scale_at"])
        if decision:
            size = state["size"] + (1 if decision == "up" else -1)
            why = f"autoscale: average {knobs['metric']} {value:.2f}"
            self.action = threading.Thread(target=self._scale, args=(size, why), daemon=True)
            self.action.start()

    def _scale(self, size: int, why: str) -> None:
        try:
            scale_to(self.resolved, size, why)
        except Exception as error:
            log_event(self.resolved, f"autoscale to {size} failed: {error}")

    def _write_status(self, state: dict, sup_states: dict, results: dict) -> None:
        members = {m["name"]: m for m in fc.upstream_members(self.resolved, state)}
        instances = []
        for index, inst in enumerate(self.resolved["instances"]):
            name, track = inst["name"], self.tracks.get(inst["name"])
            outcome, body, error = results.get(name, ("unchecked", None, ""))
            in_upstream = name in members and not members[name]["down"]
            instances.append({
                "name": name, "port": inst["port"], "device": inst["device"], "weight": inst["weight"],
                "active": index < state["size"], "in_upstream": in_upstream,
                "state": ("maintenance" if name in state["maintenance"] else
                          "ejected" if name in state["ejected"] else
                          outcome if index < state["size"] else "spare"),
                "ejected_reason": state["ejected"].get(name),
                "supervisor": sup_states.get(name, "UNKNOWN"),
                "health": body, "last_error": error or None,
                "last_check": track.checked if track else None,
                "consecutive_failures": track.fails if track else 0,
                "queue_depth": (body or {}).get("queue_depth"), "in_flight": (body or {}).get("in_flight"),
            })
        status = {
            "updated": now_iso(), "front": fc.front_url(self.resolved),
            "engine": self.resolved["engine"], "model": self.resolved["model"],
            "balancing": self.resolved["balancing"], "size": state["size"],
            "min_instances": self.resolved["min_instances"], "max_instances": self.resolved["max_instances"],
            "healthy": sum(1 for i in instances if i["active"] and i["state"] == "ok"),
            "instances": instances,
        }
        fc.write_atomic(self.run_dir / "fleet-status.json", json.dumps(status, indent=1) + "\n")


def poll(run_dir: Path, once: bool = False) -> None:
    poller = Poller(run_dir)
    if once:
        poller.tick()
    else:
        poller.run()
    sys.stdout.flush()
