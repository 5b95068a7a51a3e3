"""The fleet's status file, run/fleet-status.json (served at GET /fleet),
written by the health poller every round; and the load the autoscaler reads
from the same observations."""

from __future__ import annotations

import json
from pathlib import Path

from . import liveness
from . import state as fs
from .config import front_url, write_atomic


def write(resolved: dict, state: dict, tracks: dict[str, liveness.Track], sup_states: dict,
          results: dict) -> None:
    """Writes fleet-status.json (served at /fleet): every instance's role, the
    poller's verdict and why, Supervisor's state and the last /health body."""
    members = {m["name"]: m for m in fs.upstream_members(resolved, state)}
    instances = []
    for index, inst in enumerate(resolved["instances"]):
        name, track = inst["name"], tracks.get(inst["name"])
        outcome, body, error = results.get(name, ("unchecked", None, ""))
        active = index < state["size"]
        verdict = track.verdict if track and active else outcome
        instances.append({
            "name": name, "port": inst["port"], "device": inst["device"], "weight": inst["weight"],
            "max_concurrent": inst["max_concurrent"], "cpu_threads": inst["cpu_threads"],
            "active": active, "in_upstream": name in members and not members[name]["down"],
            "state": ("maintenance" if name in state["maintenance"] else
                      "ejected" if name in state["ejected"] else verdict if active else "spare"),
            "verdict": verdict, "reason": (track.reason if track and active else error) or None,
            "ejected_reason": state["ejected"].get(name),
            "supervisor": sup_states.get(name, "UNKNOWN"),
            "restarting": bool(track and track.restarting_since is not None),
            "health": body, "last_error": error or None,
            "last_check": track.checked if track else None,
            "consecutive_failures": track.bad if track else 0,
            "busy": verdict == "busy" or bool((body or {}).get("busy")),
            "queue_depth": (body or {}).get("queue_depth"), "in_flight": (body or {}).get("in_flight"),
            "batches_done": (body or {}).get("batches_done"),
        })
    status = {
        "updated": fs.now_iso(), "front": front_url(resolved),
        "engine": resolved["engine"], "model": resolved["model"],
        "balancing": resolved["balancing"], "size": state["size"],
        "min_instances": resolved["min_instances"], "max_instances": resolved["max_instances"],
        "cores": resolved["cores"],
        "healthy": sum(1 for i in instances if i["active"] and i["state"] in ("ok", "busy")),
        # Requests the fleet takes at once (the sum of max_conns in the
        # upstream); past it Nginx answers 503 with Retry-After at once.
        "capacity": sum(i["max_concurrent"] for i in instances if i["active"] and i["in_upstream"]),
        "instances": instances,
    }
    write_atomic(Path(resolved["run_dir"]) / "fleet-status.json", json.dumps(status, indent=1) + "\n")


def load_of(inst: dict, track: liveness.Track, metric: str) -> float:
    """An instance's load for the autoscaler; one that answers late is full."""
    if metric == "utilization":
        if track.verdict == "busy":
            return 1.0
        return track.body.get("in_flight", 0) / inst["max_concurrent"]
    return track.body.get(metric, 0)
