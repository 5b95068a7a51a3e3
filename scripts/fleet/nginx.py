"""Nginx: the upstream rewrite and the graceful reload.

Every change to the upstream goes through `change_state`: under
run/state.lock it applies the change, re-renders upstream.conf and reloads
Nginx when the upstream changed.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil

from . import render
from . import state as fs
from .config import FleetError


def nginx_master(resolved: dict) -> psutil.Process | None:
    try:
        return psutil.Process(int(Path(resolved["nginx_pid_file"]).read_text().strip()))
    except (OSError, ValueError, psutil.Error):
        return None


def nginx_test(resolved: dict) -> None:
    """`nginx -t` on the rendered config; FleetError with Nginx's reason."""
    test = subprocess.run(resolved["nginx_cmd"] + ["-t", "-q"], capture_output=True, text=True)
    if test.returncode != 0:
        raise FleetError(f"nginx -t failed, Nginx keeps its old config: {test.stderr.strip()}")


def nginx_reload(resolved: dict) -> None:
    """Checks the rendered config, then reloads Nginx gracefully (old workers
    finish their requests; new ones use the new upstream). Returns once the
    new workers run: the master stops the old ones from accepting right after,
    so a caller that just ejected an instance can rely on it."""
    nginx_test(resolved)
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
    with fs.locked(run_dir):
        state = fs.read_state(run_dir, resolved)
        before = render.render_text("nginx/upstream.conf.j2", resolved, state)
        change(state)
        fs.write_state(run_dir, state)
        if render.render_text("nginx/upstream.conf.j2", resolved, state) != before:
            render.render_upstream(resolved, state)
            nginx_reload(resolved)
        return state
