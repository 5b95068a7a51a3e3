"""A real fleet for tests: its own fleet file, run folder and free ports, so
it never collides with a `make serve` fleet; driven through scripts/fleet.py.
Also its process tree, as tests inspect it.
The traffic tests send through it is tests/fleet_traffic.py's."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psutil
import requests
from machine import (
    REPO,
    SHARED_AUDIO,
    free_port_range,
    free_ports,
    require_recordings,
    require_tool,
    wait_for,
)
from speech import CARDS

CLIP = SHARED_AUDIO / CARDS[0]
CLIPS = [SHARED_AUDIO / name for name in CARDS]
# Tests import the fleet's own modules (`from fleet import config`) from here.
sys.path.insert(0, str(REPO / "scripts"))

from fleet import config as fleet_config  # found through the line above


def merge(*dicts: dict) -> dict:
    """Deep merge, later dicts winning."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# The test fleets' fleet file, as tables (merged with each fleet's changes).
BASE_TABLES = {
    "worker": {"max_upload_mb": 1, "request_timeout_s": 60, "startsecs": 2},
    "health": {"interval_s": 0.5, "timeout_s": 2, "eject_after": 3, "restore_after": 2, "restart_after": 6,
               "max_load_s": 120},
    "scaling": {"enabled": False, "drain_timeout_s": 60},
}


def toml_text(top: dict, instances: list[dict], tables: dict) -> str:
    """A fleet file from plain dicts (values: str, bool, int, float, dict)."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)
    lines = [f"{k} = {value(v)}" for k, v in top.items()]
    for inst in instances:
        lines += ["", "[[instance]]"] + [f"{k} = {value(v)}" for k, v in inst.items()]
    for name, table in tables.items():
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        lines += ["", f"[{name}]"] + [f"{k} = {value(v)}" for k, v in plain.items()]
        for sub, inner in ((k, v) for k, v in table.items() if isinstance(v, dict)):
            lines += [f"[{name}.{sub}]"] + [f"{k} = {value(v)}" for k, v in inner.items()]
    return "\n".join(lines) + "\n"


class Fleet:
    """Real pocketsphinx workers behind Nginx under supervisord, as the
    fleet file this object writes describes them; `weights` gives each
    instance's weight (their count is max_instances), `active` how many start."""

    def __init__(self, root: Path, weights: list[int], active: int, max_upload_mb: float = 1,
                 tables: dict | None = None, instance_env: dict[int, dict] | None = None,
                 min_instances: int = 2):
        self.root = root
        self.run_dir = root / "run"
        self.config = root / "fleet.toml"
        ports = free_ports(len(weights) + 1)
        self.front_port, self.ports = ports[0], ports[1:]
        self.url = f"http://127.0.0.1:{self.front_port}"
        self.names = [f"asr-{port}" for port in self.ports]
        self.weights = dict(zip(self.names, weights))
        self.active = active
        self.top = {"front_port": self.front_port, "engine": "pocketsphinx", "instances": active,
                    "min_instances": min_instances, "max_instances": len(weights)}
        self.instances = [{"port": port, "device": "cpu", "weight": weight}
                          for port, weight in zip(self.ports, weights)]
        for index, env in (instance_env or {}).items():
            self.instances[index]["env"] = env
        self.tables = merge(BASE_TABLES, {"worker": {"max_upload_mb": max_upload_mb}}, tables or {})
        self.write_config()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "ASR_"))}

    @classmethod
    def like(cls, root: Path, source: Path) -> Fleet:
        """The fleet `source` describes, unchanged (shape, engine, balancing,
        admission, poller, scaling) but for its ports and run folder."""
        raw = tomllib.loads(source.read_text())
        if "instance" in raw:
            raise ValueError("Fleet.like takes a shorthand fleet file")
        fleet = cls.__new__(cls)
        fleet.root, fleet.run_dir, fleet.config = root, root / "run", root / "fleet.toml"
        # What the fleet would run on this machine (instances = "auto" counts cores).
        size = fleet_config.load(source, root / "run")["max_instances"]
        fleet.front_port, base = free_ports(1)[0], free_port_range(size)
        fleet.ports = list(range(base, base + size))
        fleet.url = f"http://127.0.0.1:{fleet.front_port}"
        fleet.names = [f"asr-{port}" for port in fleet.ports]
        fleet.weights = {name: 1 for name in fleet.names}
        fleet.active = None  # as many as the fleet file starts
        fleet.top = {k: v for k, v in raw.items() if not isinstance(v, dict)}
        fleet.top.update(front_port=fleet.front_port, base_port=base)
        fleet.instances = []
        fleet.tables = {k: v for k, v in raw.items() if isinstance(v, dict)}
        fleet.write_config()
        fleet.env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "ASR_"))}
        return fleet

    @functools.cached_property
    def resolved(self) -> dict:
        """The fleet file as the running fleet resolved it (its run folder's copy)."""
        return fleet_config.read_resolved(self.run_dir)

    def write_config(self, extra: str = "", tables: dict | None = None) -> None:
        """The fleet file: the fleet's tables with `tables` merged in, then `extra` text."""
        text = toml_text(self.top, self.instances, merge(self.tables, tables or {}))
        self.config.write_text(text + extra)

    def cli(self, *args: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "fleet.py"), "--config", str(self.config),
             "--run-dir", str(self.run_dir), *args],
            check=False, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"fleet.py {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result

    def status(self) -> dict:
        return requests.get(self.url + "/fleet", timeout=5).json()

    def instance(self, name: str) -> dict:
        return next(i for i in self.status()["instances"] if i["name"] == name)

    def events(self) -> str:
        path = self.run_dir / "logs" / "fleet-events.log"
        return path.read_text() if path.exists() else ""

    def pid(self, name: str) -> int:
        """The instance's Gunicorn master pid as Supervisor has it (0: not running)."""
        command = [require_tool("supervisorctl"), "-c", str(self.run_dir / "supervisord.conf"), "pid", name]

        def answer() -> str | None:
            # On a loaded machine supervisorctl can fail to get an answer; a
            # missing number is asked again, never read as "not running".
            out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60).stdout
            out = out.strip()
            return out if out.isdigit() else None
        return int(wait_for(answer, 30, f"supervisorctl to give the pid of {name}", interval=0.5))

    def signal_instance(self, name: str, sig: int) -> int:
        """Signals the instance's whole process group (Gunicorn master and worker)."""
        pid = self.pid(name)
        assert pid, f"{name} has no pid"
        os.killpg(os.getpgid(pid), sig)
        return pid

    def settled(self, size: int | None = None) -> bool:
        """Every active instance healthy and in the upstream, nothing in maintenance."""
        try:
            status = self.status()
        except (OSError, ValueError):
            return False
        active = [i for i in status["instances"] if i["active"]]
        return ((size is None or status["size"] == size) and
                all(i["state"] == "ok" and i["in_upstream"] for i in active))

    def wait_settled(self, size: int | None = None, timeout: float = 60) -> None:
        wait_for(lambda: self.settled(size), timeout, f"the fleet to settle at size {size}")

    def start(self) -> None:
        """Brings the fleet up; what it needs missing, a skip (a failure under CI=true)."""
        for tool in ("nginx", "supervisord"):
            require_tool(tool)
        require_recordings(*CARDS)
        result = self.cli("serve", "--no-setup", "--timeout", "120", check=False, timeout=200)
        if result.returncode != 0:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}"
                             for p in sorted((self.run_dir / "logs").glob("*.log")))
            self.stop()
            raise AssertionError(f"fleet did not start:\n{result.stdout}\n{result.stderr}\n{logs}")

    @contextlib.contextmanager
    def running(self, size: int | None = None, timeout: float = 120) -> Iterator[Fleet]:
        """Started and settled (`size` active instances, each healthy and in
        the upstream), for a fixture to yield; stopped on leaving."""
        self.start()
        try:
            self.wait_settled(size, timeout)
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        try:
            self.cli("stop", timeout=180, check=False)
        finally:
            # Whatever survived (a failed stop): kill supervisord and its tree.
            pid_file = self.run_dir / "supervisord.pid"
            if pid_file.exists():
                try:
                    parent = psutil.Process(int(pid_file.read_text()))
                    for proc in parent.children(recursive=True) + [parent]:
                        proc.send_signal(signal.SIGCONT)
                        proc.kill()
                except (psutil.Error, ValueError):
                    pass


def fleet_processes(run_dir: Path) -> list[psutil.Process]:
    """supervisord and everything under it."""
    parent = psutil.Process(int((run_dir / "supervisord.pid").read_text()))
    return [parent] + parent.children(recursive=True)


def whisper_fleet(root: Path, model: str, worker: dict | None = None) -> Fleet:
    """Two Whisper instances of `model` (one core each, 20 MB uploads), not yet started."""
    fleet = Fleet(root, weights=[1, 1], active=2, max_upload_mb=20,
                  tables={"worker": {"startsecs": 2, **(worker or {})}})
    fleet.top.update(engine="whisper", model=model)
    fleet.write_config()
    return fleet

