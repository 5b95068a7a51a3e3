"""Bringing the fleet up and down: install what is missing, fetch the model
once, render, start supervisord, wait until healthy; and the orderly stop."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import render
from . import state as fs
from .config import REPO, FleetError, front_url, load, read_resolved
from .supervisor import Supervisor, wait_healthy

SHARED_AUDIO = REPO.parent / "shared" / "audio"


def ensure_system_packages() -> None:
    missing = [tool for tool in ("nginx", "ffmpeg")
               if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        print(f"fleet: {', '.join(missing)} missing; running scripts/setup.sh --system", flush=True)
        subprocess.run([str(REPO / "scripts" / "setup.sh"), "--system"], check=True)


def prefetch(resolved: dict) -> None:
    """Makes the model local once, before the workers start (never once per
    worker): downloads a hub model or assembles the embedded Whisper model.
    An explicitly named model that cannot be had stops the start here."""
    sys.path.insert(0, str(REPO))
    try:
        from app import engines
        from app.errors import ConfigError
        from app.settings import Settings
    except ImportError as error:
        print(f"fleet: cannot prefetch ({error}); workers decide on their own", file=sys.stderr)
        return
    try:
        settings = Settings(engine=resolved["engine"], model=resolved["model"],
                            model_cache_dir=resolved["model_cache"] or None)
        print(f"fleet: serving {engines.prefetch(settings)}", flush=True)
    except ConfigError as error:
        raise FleetError(f"engine = \"{resolved['engine']}\": {error}") from None


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def front_get(resolved: dict, path: str, timeout: float = 5):
    import requests
    return requests.get(front_url(resolved) + path, timeout=timeout)


def start(config: Path, run_dir: Path, timeout: float) -> tuple[dict, list[str], dict]:
    """Renders and starts a stopped fleet; returns (resolved, instances not
    healthy, the front's /health body or {} when Nginx does not answer)."""
    resolved = load(config, run_dir)
    prefetch(resolved)
    run_dir = run_dir.resolve()
    for stale in ("supervisor.sock", "supervisord.pid", "nginx.pid"):
        (run_dir / stale).unlink(missing_ok=True)
    busy = [str(p) for p in [resolved["front_port"]] + [i["port"] for i in resolved["instances"]]
            if not port_free("127.0.0.1", p)]
    if busy:
        raise FleetError(f"port(s) {', '.join(busy)} already in use (another fleet? make stop)")
    state = fs.fresh_state(resolved)
    run_dir.mkdir(parents=True, exist_ok=True)
    render.render_all(resolved, state)
    fs.write_state(run_dir, state)
    test = subprocess.run(resolved["nginx_cmd"] + ["-t", "-q"], capture_output=True, text=True)
    if test.returncode:
        raise FleetError(f"nginx -t failed: {test.stderr.strip()}")
    subprocess.run([f"{resolved['bin_dir']}/supervisord", "-c", resolved["supervisor_conf"]], check=True)
    sup = Supervisor(resolved)
    deadline = time.monotonic() + 20
    while not sup.running():
        if time.monotonic() > deadline:
            raise FleetError(f"supervisord did not start:\n{tail(run_dir / 'logs' / 'supervisord.log')}")
        time.sleep(0.2)
    active = resolved["instances"][:state["size"]]
    print(f"fleet: started supervisord; loading {len(active)} instance(s) ...", flush=True)
    failed = wait_healthy(resolved, active, timeout or resolved["health"]["max_load_s"], sup, progress=True)
    if failed:
        for name in failed:
            print(f"--- {name} ({sup.state(name)}): {run_dir}/logs/{name}.log\n"
                  f"{tail(run_dir / 'logs' / f'{name}.log')}", file=sys.stderr)
        return resolved, failed, {}
    for _ in range(50):
        try:
            response = front_get(resolved, "/health")
            if response.ok and (run_dir / "fleet-status.json").exists():
                return resolved, [], response.json()
        except OSError:
            pass
        time.sleep(0.2)
    print(f"fleet: Nginx is not answering:\n{tail(run_dir / 'logs' / 'nginx-error.log')}", file=sys.stderr)
    return resolved, [], {}


def print_welcome(resolved: dict, health: dict) -> None:
    front = front_url(resolved)
    active = resolved["initial_instances"]
    audio = os.path.relpath(SHARED_AUDIO / "jfk.flac") if (SHARED_AUDIO / "jfk.flac").exists() else "FILE"
    print(f"\nASR fleet up: {active} instance(s) behind {front}\n"
          f"  model:  {health.get('model')} (engine {health.get('engine')}, {health.get('device')})")
    if resolved["engine"] == "auto" and health.get("engine") != "funasr":
        print(f"  note:   the FunASR model {resolved['model'] or '(default)'} was not available; auto serves "
              f"the embedded {health.get('engine')} model")
    print(f"  try:    curl -F file=@{audio} {front}/asr\n"
          f"  watch:  make status | make monitor | curl {front}/fleet\n  stop:   make stop")


def stop(run_dir: Path) -> int:
    """Shuts supervisord down (poller first, workers last, each finishing its queue)."""
    if not (run_dir / "fleet.json").exists():
        print("fleet: not running (never started here)")
        return 0
    resolved = read_resolved(run_dir)
    sup = Supervisor(resolved)
    if not sup.running():
        print("fleet: not running")
        return 0
    pid = int((run_dir / "supervisord.pid").read_text())
    sup.rpc.shutdown()
    deadline = time.monotonic() + resolved["worker"]["stopwaitsecs"] * 2 + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("fleet: stopped")
            return 0
        time.sleep(0.2)
    print(f"fleet: supervisord (pid {pid}) still running", file=sys.stderr)
    return 1
