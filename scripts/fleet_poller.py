"""The health poller (scripts/health_poller.sh runs `fleet.py poll`).

Every health.interval_s it probes each active instance's /health in parallel;
after eject_after failures the instance leaves the upstream, after
restore_after good checks it comes back, after restart_after hard failures
(or a load past max_load_s) it is restarted through Supervisor; STOPPED or
EXITED instances are started, FATAL ones retried each minute. It runs the
autoscaler and writes fleet-status.json (served at /fleet).
"""

from __future__ import annotations

import http.client
import json
import signal
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path

import fleet_state as fs
from fleet_actions import scale_to
from fleet_autoscale import Autoscaler
from fleet_config import front_url, read_resolved, write_atomic
from fleet_nginx import change_state
from fleet_supervisor import STOPPED_STATES, Supervisor, probe_all


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
            self.resolved = read_resolved(self.run_dir)
            self.mtime = mtime
            self.sup = Supervisor(self.resolved)
            self.scaler = Autoscaler(self.resolved["scaling"])

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        fs.log_event(self.resolved, f"poller: watching {len(self.resolved['instances'])} instances "
                                 f"every {self.resolved['health']['interval_s']} s")
        while not self.stopping:
            started = time.monotonic()
            try:
                self.tick()
            except Exception as error:  # the poller must outlive any one bad tick
                fs.log_event(self.resolved, f"poller: tick failed: {type(error).__name__}: {error}")
            rest = self.resolved["health"]["interval_s"] - (time.monotonic() - started)
            end = time.monotonic() + max(rest, 0.05)
            while not self.stopping and time.monotonic() < end:
                time.sleep(min(0.1, max(end - time.monotonic(), 0)))
        fs.log_event(self.resolved, "poller: stopped")

    def tick(self) -> None:
        self._load()
        resolved, health = self.resolved, self.resolved["health"]
        state = fs.read_state(self.run_dir, resolved)
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
            track.checked = fs.now_iso()
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
                fs.log_event(resolved, f"{name}: healthy -> ejected from the upstream ({reason})")
            for name in restore:
                fs.log_event(resolved, f"{name}: ejected -> healthy, back in the upstream")
            state = fs.read_state(self.run_dir, resolved)
        self._autoscale(state, active)
        self._write_status(state, sup_states, results)

    def _restart_or_start(self, inst: dict, track: Track, sup_state: str, now: float) -> None:
        name, health = inst["name"], self.resolved["health"]
        if sup_state != "RUNNING":
            track.hard_fails = 0  # starting or stopping: Supervisor is on it
        if sup_state in STOPPED_STATES:
            fs.log_event(self.resolved, f"{name}: supervisor says {sup_state}; starting it")
            self.sup.start(name)
            track.last_restart = now
        elif sup_state == "FATAL" and now - track.last_fatal_start > 60:
            fs.log_event(self.resolved, f"{name}: FATAL (failed to start); trying again")
            track.last_fatal_start = now
            self.sup.start(name)
        elif sup_state == "RUNNING" and (
                track.hard_fails >= health["restart_after"]
                or (track.loading_since is not None and now - track.loading_since > health["max_load_s"])):
            fs.log_event(self.resolved, f"{name}: {track.fails} failed checks ({track.error}); restarting it")
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
            fs.log_event(self.resolved, f"autoscale to {size} failed: {error}")

    def _write_status(self, state: dict, sup_states: dict, results: dict) -> None:
        members = {m["name"]: m for m in fs.upstream_members(self.resolved, state)}
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
            "updated": fs.now_iso(), "front": front_url(self.resolved),
            "engine": self.resolved["engine"], "model": self.resolved["model"],
            "balancing": self.resolved["balancing"], "size": state["size"],
            "min_instances": self.resolved["min_instances"], "max_instances": self.resolved["max_instances"],
            "healthy": sum(1 for i in instances if i["active"] and i["state"] == "ok"),
            "instances": instances,
        }
        write_atomic(self.run_dir / "fleet-status.json", json.dumps(status, indent=1) + "\n")


def poll(run_dir: Path, once: bool = False) -> None:
    poller = Poller(run_dir)
    if once:
        poller.tick()
    else:
        poller.run()
    sys.stdout.flush()
