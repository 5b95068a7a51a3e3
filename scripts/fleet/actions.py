"""Operations on a running fleet: scaling, rolling restart, rolling reload.

Each holds run/action.lock for its whole length. An instance leaves the
upstream (Nginx reloaded gracefully) before it is drained and stopped, and
comes back only once its /health is green, so no request is dropped.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import render
from . import state as fs
from .config import FleetError
from .nginx import change_state, nginx_reload
from .supervisor import Supervisor, probe, wait_healthy


def drain(resolved: dict, inst: dict) -> bool:
    """After the instance left the upstream: waits until it holds no request."""
    time.sleep(0.5)  # old Nginx workers may still be handing it a request
    deadline = time.monotonic() + resolved["scaling"]["drain_timeout_s"]
    idle_probes = 0
    while time.monotonic() < deadline:
        outcome, body, _ = probe(inst["port"], 2)
        if outcome == "fail" and body is None:
            return True  # nothing listening: nothing to drain
        # Idle: no request in hand, no segment waiting, and no engine call
        # running (a job's segments reach the model without a request).
        idle = body is not None and body.get("in_flight", 0) == 0 and body.get("queue_depth", 0) == 0 \
            and not body.get("batch_running_s")
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
        raise FleetError(f"scale to {size}: must be within min_instances {low} and max_instances "
                         f"{high} (edit the fleet file to change them, then make reload)")
    run_dir = Path(resolved["run_dir"])
    sup = Supervisor(resolved)
    with fs.locked(run_dir, "action"):
        current = fs.read_state(run_dir, resolved)["size"]
        pool = resolved["instances"]
        if size > current:
            new = pool[current:size]
            for inst in new:
                sup.start(inst["name"])
            names = ", ".join(i["name"] for i in new)
            fs.log_event(resolved, f"scale {current} -> {size} ({why}): starting {names}")
            failed = wait_healthy(resolved, new, resolved["health"]["max_load_s"], sup)
            if failed:
                for name in failed:
                    sup.stop(name)
                raise FleetError(f"scale up failed: {', '.join(failed)} never became healthy")

            def grow(state):
                state["size"], state["last_scale_at"] = size, time.time()
            change_state(resolved, grow)
            fs.log_event(resolved, f"scale {current} -> {size}: {names} in the upstream")
        elif size < current:
            gone = pool[size:current]

            def shrink(state):
                state["size"], state["last_scale_at"] = size, time.time()
                for inst in gone:
                    state["ejected"].pop(inst["name"], None)
            change_state(resolved, shrink)
            fs.log_event(resolved, f"scale {current} -> {size} ({why}): "
                                   f"{', '.join(i['name'] for i in gone)} out of the upstream, draining")
            for inst in gone:
                if not drain(resolved, inst):
                    fs.log_event(resolved, f"{inst['name']}: drain timed out; stopping it anyway")
                sup.stop(inst["name"])
            fs.log_event(resolved, f"scale {current} -> {size}: {', '.join(i['name'] for i in gone)} stopped")


def restart_instance(resolved: dict, inst: dict, sup: Supervisor, *, active: bool, regroup: bool,
                     what: str) -> None:
    """Out of the upstream and drained (when active), stopped, started again
    (`regroup`: re-added to Supervisor so new program settings apply), and
    back in the upstream once healthy, before the caller touches the next."""
    name = inst["name"]
    if active:
        change_state(resolved, lambda s: s["maintenance"].append(name))
        if not drain(resolved, inst):
            fs.log_event(resolved, f"{what}: {name} drain timed out; restarting it anyway")
    sup.stop(name)
    if regroup:
        sup.rpc.removeProcessGroup(name)
        sup.rpc.addProcessGroup(name)  # starts it again when autostart=true
    elif active:
        sup.start(name)
    if active:
        if wait_healthy(resolved, [inst], resolved["health"]["max_load_s"], sup):
            raise FleetError(f"{what}: {name} did not become healthy (see make logs); it stays out of "
                             "the upstream and the rest of the fleet was left as it was")
        change_state(resolved, lambda s: s["maintenance"].remove(name))


def rolling_restart(resolved: dict) -> list[str]:
    """Restarts every active instance, one at a time; returns their names."""
    run_dir = Path(resolved["run_dir"])
    sup = Supervisor(resolved)
    with fs.locked(run_dir, "action"):
        active = resolved["instances"][:fs.read_state(run_dir, resolved)["size"]]
        for inst in active:
            fs.log_event(resolved, f"rolling restart: {inst['name']} out of the upstream, draining")
            restart_instance(resolved, inst, sup, active=True, regroup=False, what="rolling restart")
            fs.log_event(resolved, f"rolling restart: {inst['name']} restarted and back in the upstream")
        return [inst["name"] for inst in active]


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
    a config Nginx refuses changes nothing; changed instances restart one at a
    time, each out of the upstream while it drains; Nginx reloads gracefully."""
    run_dir = Path(new["run_dir"])
    sup = Supervisor(new)
    old_sections = _program_sections(Path(new["supervisor_conf"]))
    by_name = {inst["name"]: inst for inst in old["instances"] + new["instances"]}
    with fs.locked(run_dir, "action"):
        with fs.locked(run_dir):
            old_size = fs.read_state(run_dir, old)["size"]
            state = fs.read_state(run_dir, new)
            states = sup.states()
            new_active = [inst["name"] for inst in new["instances"][:state["size"]]]
            state["ejected"] = {k: v for k, v in state["ejected"].items() if k in new_active}
            state["maintenance"] = [n for n in new_active if states.get(n, {}).get("statename") != "RUNNING"]
            render.check_nginx(new, state)
            render.render_all(new, state)
            fs.write_state(run_dir, state)
        new_sections = _program_sections(Path(new["supervisor_conf"]))
        [[added, changed, removed]] = sup.rpc.reloadConfig()
        nginx_reload(new)
        fs.log_event(new, f"reload: added {added or '-'}, changed {changed or '-'}, removed {removed or '-'}")
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
            restart_instance(new, by_name[name], sup, active=name in new_active, regroup=True,
                             what="reload")
            fs.log_event(new, f"reload: {name} restarted with its new settings")
        pending = [by_name[n] for n in fs.read_state(run_dir, new)["maintenance"]]
        for inst in pending:
            sup.start(inst["name"])
        failed = wait_healthy(new, pending, new["health"]["max_load_s"], sup)
        change_state(new, lambda s: s.update(maintenance=[]))
        if failed:
            raise FleetError(f"reload: {', '.join(failed)} did not become healthy (see make logs)")
