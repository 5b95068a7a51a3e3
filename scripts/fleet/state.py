"""The fleet's run-time state and its event journal.

run/state.json says how many instances are active, which ones the poller took
out of the upstream (`ejected`) and which ones an operation holds out on
purpose (`maintenance`); it changes only under run/state.lock. Long
operations (scale, reload, rolling restart, autoscaling) hold
run/action.lock, so the CLI and the poller never interleave. Every
transition is appended, timestamped, to logs/fleet-events.log.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import time
from pathlib import Path

from .config import FleetError, write_atomic


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def log_event(resolved: dict, message: str) -> None:
    """Prints a timestamped line and appends it to logs/fleet-events.log."""
    line = f"{now_iso()} {message}"
    print(line, flush=True)
    try:
        with open(Path(resolved["log_dir"]) / "fleet-events.log", "a") as handle:
            handle.write(line + "\n")
    except OSError:
        pass


@contextlib.contextmanager
def locked(run_dir: Path, name: str = "state", *, blocking: bool = True, timeout: float = 600):
    """Holds run/<name>.lock; yields False at once when not blocking and busy."""
    handle = open(run_dir / f"{name}.lock", "w")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not blocking:
                    yield False
                    return
                if time.monotonic() > deadline:
                    raise FleetError(f"{name}.lock still held after {timeout:.0f} s") from None
                time.sleep(0.1)
        yield True
    finally:
        handle.close()


def fresh_state(resolved: dict) -> dict:
    return {"size": resolved["initial_instances"], "ejected": {}, "maintenance": [], "last_scale_at": 0.0}


def read_state(run_dir: Path, resolved: dict) -> dict:
    try:
        state = json.loads((run_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        state = {}
    for key, value in fresh_state(resolved).items():
        state.setdefault(key, value)
    state["size"] = max(resolved["min_instances"], min(state["size"], resolved["max_instances"]))
    return state


def write_state(run_dir: Path, state: dict) -> None:
    write_atomic(run_dir / "state.json", json.dumps(state, indent=1, sort_keys=True) + "\n")


def upstream_members(resolved: dict, state: dict) -> list[dict]:
    """Active instances with whether Nginx should treat them as down."""
    active = resolved["instances"][:state["size"]]
    held = set(state.get("maintenance", []))
    out = [{**inst, "down": inst["name"] in state["ejected"] or inst["name"] in held,
            "reason": state["ejected"].get(inst["name"], "maintenance")} for inst in active]
    if all(member["down"] for member in out):
        # An upstream of only `down` servers answers 502 to everyone; trying
        # the sick instances is never worse than that.
        for member in out:
            member["down"] = False
            member["reason"] += " (kept: every instance is out)"
    return out
