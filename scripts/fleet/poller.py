"""The health poller (scripts/health_poller.sh runs `fleet.py poll`).

Every health.interval_s it probes each active instance's /health in parallel
and judges it (liveness.py): ok, loading, busy (late, but its
processes work), stuck or dead. Busy is never held against an instance.
After eject_after stuck or dead rounds an instance leaves the upstream (one
at a time, never the last one serving); after restore_after ok rounds it
comes back. After restart_after such rounds it is restarted, one at a time:
a stuck one is killed (SIGKILL to its process group; Supervisor starts it
again and Nginx replays what it held), a dead one stopped gracefully so
whatever it still holds finishes. STOPPED or EXITED instances are started,
FATAL ones retried every health.fatal_retry_s. Instances an operation holds
in maintenance are left alone. It runs the autoscaler and writes
fleet-status.json (served at /fleet).
"""

from __future__ import annotations

import http.client
import os
import signal
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path

from . import capacity, liveness, status
from . import state as fs
from .actions import scale_to
from .autoscale import Autoscaler
from .config import read_resolved
from .nginx import change_state
from .supervisor import STOPPED_STATES, Supervisor, probe, probe_all


class Poller:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.mtime = 0.0
        self.tracks: dict[str, liveness.Track] = {}
        self.notes: dict[str, str] = {}
        # Second, patient probes of instances whose /health timed out.
        self.patient: dict[str, Patient] = {}
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
        capacity.host_cpu_percent()  # the first call only sets psutil's mark
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

    def _note(self, key: str, message: str | None) -> None:
        """Logs a held-back action once, not every round."""
        if message and self.notes.get(key) != message:
            fs.log_event(self.resolved, message)
        self.notes[key] = message or ""

    def tick(self) -> None:
        self._load()
        resolved, health = self.resolved, self.resolved["health"]
        state = fs.read_state(self.run_dir, resolved)
        try:
            infos = self.sup.states()
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            infos = {}
        sup_states = {name: info["statename"] for name, info in infos.items()}
        active = resolved["instances"][:state["size"]]
        watched = [i for i in resolved["instances"] if i in active or sup_states.get(i["name"]) == "RUNNING"]
        results = probe_all(watched, health["timeout_s"])
        now = time.monotonic()
        for inst in active:
            name = inst["name"]
            track = self.tracks.setdefault(name, liveness.Track())
            track.checked = fs.now_iso()
            running = sup_states.get(name) == "RUNNING"
            self._patient(inst, track, results[name][0])
            liveness.judge(track, results[name], infos[name]["pid"] if running else None, health, now)
            if name not in state["maintenance"]:
                liveness.count(track, health, now)
        state = self._eject_and_restore(state, active)
        for inst in active:
            name = inst["name"]
            if name not in state["maintenance"]:
                self._restart_or_start(inst, self.tracks[name], sup_states.get(name, "UNKNOWN"),
                                       infos.get(name, {}), now)
        self._autoscale(state, active)
        status.write(self.resolved, state, self.tracks, sup_states, results)

    def _patient(self, inst: dict, track: liveness.Track, outcome: str) -> None:
        """After a timeout, asks again in the background with all the time
        the stuck deadline allows: a late answer is still an answer, and an
        instance that gives one is busy, however long it took."""
        name = inst["name"]
        patient = self.patient.get(name)
        if patient is not None and patient.answer is not None:
            del self.patient[name]
            when, (_, body, _) = patient.answer
            if body is not None:
                liveness.answered(track, body, when)
        if outcome == "timeout" and name not in self.patient:
            deadline = liveness.stuck_deadline(self.resolved["health"], track)
            self.patient[name] = Patient(inst["port"], deadline)

    def _eject_and_restore(self, state: dict, active: list[dict]) -> dict:
        resolved, health = self.resolved, self.resolved["health"]
        names = [inst["name"] for inst in active]
        restore = [n for n in names
                   if n in state["ejected"] and self.tracks[n].oks >= health["restore_after"]]
        out = (set(state["ejected"]) - set(restore)) | set(state["maintenance"])
        eject = {}
        for name in names:
            track = self.tracks[name]
            if name in out or name in state["maintenance"] or track.bad < health["eject_after"]:
                continue
            blocker = liveness.eject_blocker(name, names, out, self.tracks)
            if blocker:
                self._note(f"{name} eject", f"{name}: {track.verdict}, kept in the upstream: {blocker}")
                continue
            self._note(f"{name} eject", None)
            eject[name] = f"{track.verdict}: {track.bad} bad checks, last: {track.reason}"
            out.add(name)
        if not (eject or restore):
            return state

        def apply(s):
            s["ejected"].update(eject)
            for name in restore:
                s["ejected"].pop(name, None)
        change_state(resolved, apply)
        for name in restore:
            fs.log_event(resolved, f"{name}: ejected -> healthy, back in the upstream")
        for name, reason in eject.items():
            fs.log_event(resolved, f"{name}: healthy -> ejected from the upstream ({reason})")
        return fs.read_state(self.run_dir, resolved)

    def _restart_or_start(self, inst: dict, track: liveness.Track, sup_state: str, info: dict,
                          now: float) -> None:
        name, health = inst["name"], self.resolved["health"]
        if track.restarting_since is not None and (
                sup_state == "FATAL" or now - track.restarting_since > health["max_load_s"]
                + self.resolved["worker"]["stopwaitsecs"]):
            track.restarting_since = None  # it will not come back by itself: let others go
        if sup_state in STOPPED_STATES:
            fs.log_event(self.resolved, f"{name}: supervisor says {sup_state}; starting it")
            self.sup.start(name)
        elif sup_state == "FATAL" and now - track.last_fatal_start > health["fatal_retry_s"]:
            fs.log_event(self.resolved, f"{name}: FATAL (failed to start); trying again")
            track.last_fatal_start = now
            self.sup.start(name)
        elif (sup_state == "RUNNING" and track.bad >= health["restart_after"]
              and track.restarting_since is None):
            blocker = liveness.restart_blocker(name, self.tracks)
            if blocker:
                self._note(f"{name} restart", f"{name}: {track.verdict}, restart held back: {blocker}")
                return
            self._note(f"{name} restart", None)
            track.restarting_since, track.bad = now, 0
            if track.verdict == "stuck":
                # Nothing it holds can finish: kill the whole group at once
                # (a stop would wait stopwaitsecs on a frozen process).
                # Supervisor starts it again (autorestart); Nginx replays the
                # requests it held on another instance.
                fs.log_event(self.resolved, f"{name}: stuck ({track.reason}); killing and restarting it")
                try:
                    os.killpg(info["pid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError, KeyError) as error:
                    fs.log_event(self.resolved, f"{name}: kill failed ({error}); stopping it instead")
                    self.sup.stop(name, wait=False)
            else:
                # A graceful stop: Gunicorn finishes what it holds first
                # (graceful_timeout_s); the next tick starts it once STOPPED.
                fs.log_event(self.resolved, f"{name}: {track.verdict} ({track.reason}); restarting it")
                self.sup.stop(name, wait=False)

    def _autoscale(self, state: dict, active: list[dict]) -> None:
        knobs, resolved = self.resolved["scaling"], self.resolved
        if not knobs["enabled"] or (self.action is not None and self.action.is_alive()):
            return
        serving = [(inst, t) for inst in active if (t := self.tracks.get(inst["name"]))
                   and t.verdict in ("ok", "busy") and t.body and inst["name"] not in state["ejected"]]
        values = [status.load_of(inst, t, knobs["metric"]) for inst, t in serving]
        value = sum(values) / len(values) if values else None
        room, why_not = True, ""
        if state["size"] < resolved["max_instances"]:
            bodies = {inst["name"]: t.body if t.verdict == "ok" else None for inst, t in serving}
            busy = capacity.busy_threads(resolved, active, bodies)
            spare = resolved["instances"][state["size"]]
            room, why_not = capacity.room_for(resolved, spare, busy, capacity.host_cpu_percent())
        decision = self.scaler.observe(time.time(), value, state["size"], resolved["min_instances"],
                                       resolved["max_instances"], state["last_scale_at"], can_grow=room)
        if decision == "blocked":
            self._note("autoscale", f"autoscale: average {knobs['metric']} {value:.2f} is high, but no "
                                    f"instance added: {why_not}")
        elif decision:
            self._note("autoscale", None)
            size = state["size"] + (1 if decision == "up" else -1)
            why = f"autoscale: average {knobs['metric']} {value:.2f}"
            self.action = threading.Thread(target=self._scale, args=(size, why), daemon=True)
            self.action.start()

    def _scale(self, size: int, why: str) -> None:
        try:
            scale_to(self.resolved, size, why)
        except Exception as error:
            fs.log_event(self.resolved, f"autoscale to {size} failed: {error}")


class Patient:
    """One /health probe in a daemon thread (a stopping poller never waits
    for it); `answer` is (when it came, the probe result) once done."""

    def __init__(self, port: int, timeout: float):
        self.answer: tuple[float, tuple] | None = None

        def run() -> None:
            result = probe(port, timeout)
            self.answer = time.monotonic(), result
        threading.Thread(target=run, name=f"patient-{port}", daemon=True).start()


def poll(run_dir: Path, once: bool = False) -> None:
    poller = Poller(run_dir)
    if once:
        poller.tick()
    else:
        poller.run()
    sys.stdout.flush()
