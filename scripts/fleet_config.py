"""The fleet description: fleet.toml in, a resolved fleet and rendered configs out.

`load()` reads and checks fleet.toml and resolves it into one plain dict (the
instance pool with ports, devices and weights, every knob with its default),
saved as run/fleet.json: the poller, the monitor and the CLI all read that
file, so an edit to fleet.toml takes effect only on `make reload`.

The run-time state (how many instances are active, which ones the poller took
out of the upstream) lives in run/state.json, changed only under a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import jinja2

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "deploy"
ENGINES = ("auto", "funasr", "pocketsphinx")
BALANCING = ("round_robin", "least_conn")
METRICS = ("in_flight", "queue_depth")

# Every knob of every table, with its default. Unknown keys are an error, so
# a typo in fleet.toml never silently keeps a default.
DEFAULTS: dict[str, dict] = {
    "": {
        "front_host": "127.0.0.1", "front_port": 5002, "engine": "auto",
        "model": "iic/SenseVoiceSmall", "model_cache": "", "instances": 3, "base_port": 8001,
        "gpus": "auto", "min_instances": None, "max_instances": None, "balancing": "round_robin",
    },
    "worker": {
        "max_upload_mb": 100, "request_timeout_s": 300, "graceful_timeout_s": 30, "startsecs": 20,
        "stopwaitsecs": None, "startretries": 3, "log_maxbytes": "50MB", "log_backups": 5, "env": {},
    },
    "nginx": {
        "worker_processes": "auto", "max_fails": 3, "fail_timeout_s": 10, "next_upstream_tries": 3,
        "connect_timeout_s": 2, "read_timeout_margin_s": 60, "keepalive": 16,
        "keepalive_timeout_s": 60,
    },
    "health": {
        "interval_s": 2.0, "timeout_s": 2.0, "eject_after": 3, "restore_after": 2,
        "restart_after": 10, "max_load_s": 600,
    },
    "scaling": {
        "enabled": True, "metric": "in_flight", "high_mark": 4.0, "low_mark": 0.5,
        "high_for_s": 30, "low_for_s": 120, "cooldown_s": 60, "drain_timeout_s": None,
    },
    "monitor": {"interval_s": 2.0, "p95_alert_ms": 10000, "error_rate_alert": 0.05, "log_dir": ""},
}
INSTANCE_KEYS = {"port", "device", "weight"}


class FleetError(Exception):
    """A fleet problem with a one-line reason for the operator."""


def gpu_count() -> int:
    """GPUs nvidia-smi lists; 0 without the tool or a driver."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _merge(raw: dict, table: str) -> dict:
    defaults = DEFAULTS[table]
    section = raw if table == "" else raw.get(table, {})
    if not isinstance(section, dict):
        raise FleetError(f"[{table}] must be a table")
    known = set(defaults) | ({"instance"} | set(DEFAULTS) - {""} if table == "" else set())
    unknown = sorted(set(section) - known)
    if unknown:
        where = f"[{table}]" if table else "the top level"
        raise FleetError(f"unknown key(s) {', '.join(unknown)} at {where} of the fleet file")
    return {key: section.get(key, default) for key, default in defaults.items()}


def _device(value, gpus: int, where: str) -> str:
    if value == "cpu":
        return "cpu"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FleetError(f"{where}: device must be a GPU index or \"cpu\", not {value!r}")
    if value >= gpus:
        print(f"fleet: {where}: GPU {value} not present ({gpus} found); running it on the CPU",
              file=sys.stderr)
        return "cpu"
    return str(value)


def _pool(raw: dict, top: dict, gpus: int) -> list[dict]:
    """The instance pool: explicit [[instance]] tables, or the shorthand."""
    if "instance" in raw:
        pool = []
        for index, entry in enumerate(raw["instance"]):
            where = f"[[instance]] #{index + 1}"
            unknown = sorted(set(entry) - INSTANCE_KEYS)
            if unknown or "port" not in entry:
                raise FleetError(f"{where}: needs port; allowed keys are {', '.join(sorted(INSTANCE_KEYS))}")
            pool.append({"port": entry["port"], "weight": entry.get("weight", 1),
                         "device": _device(entry.get("device", "cpu"), gpus, where)})
        return pool
    top_gpus = top["gpus"]
    if top_gpus == "auto":
        indexes = list(range(gpus))
    elif isinstance(top_gpus, list):
        devices = [_device(g, gpus, "gpus") for g in top_gpus]
        indexes = [int(d) for d in devices if d != "cpu"]
    else:
        raise FleetError(f"gpus must be \"auto\" or a list of GPU indexes, not {top_gpus!r}")
    size = top["max_instances"] or top["instances"]
    return [{"port": top["base_port"] + i, "weight": 1,
             "device": str(indexes[i % len(indexes)]) if indexes else "cpu"} for i in range(size)]


def _check(resolved: dict) -> None:
    pool = resolved["instances"]
    ports = [inst["port"] for inst in pool]
    for port in ports + [resolved["front_port"]]:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise FleetError(f"port {port!r} is not 1-65535")
    if len(set(ports)) != len(ports) or resolved["front_port"] in ports:
        raise FleetError("instance ports must be distinct and differ from front_port")
    for inst in pool:
        if not isinstance(inst["weight"], int) or inst["weight"] < 1:
            raise FleetError(f"{inst['name']}: weight must be a positive integer")
    if resolved["engine"] not in ENGINES:
        raise FleetError(f"engine must be one of {', '.join(ENGINES)}")
    if resolved["balancing"] not in BALANCING:
        raise FleetError(f"balancing must be one of {', '.join(BALANCING)}")
    if resolved["scaling"]["metric"] not in METRICS:
        raise FleetError(f"scaling.metric must be one of {', '.join(METRICS)}")
    low, start, high = resolved["min_instances"], resolved["initial_instances"], resolved["max_instances"]
    if not 1 <= low <= start <= high <= len(pool):
        raise FleetError(f"need 1 <= min_instances ({low}) <= instances ({start}) <= max_instances "
                         f"({high}) <= instances defined ({len(pool)})")
    worker = resolved["worker"]
    if worker["stopwaitsecs"] <= worker["graceful_timeout_s"]:
        raise FleetError("worker.stopwaitsecs must exceed worker.graceful_timeout_s: Supervisor "
                         "would SIGKILL a worker still finishing its queue")


def load(config: Path, run_dir: Path, *, mode: str = "local", gpus: int | None = None) -> dict:
    """Reads fleet.toml and returns the resolved fleet (what run/fleet.json holds)."""
    try:
        raw = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise FleetError(f"cannot read {config}: {error}") from None
    gpus = gpu_count() if gpus is None else gpus
    top = _merge(raw, "")
    if isinstance(top["instances"], list):
        raise FleetError("explicit instances are [[instance]] tables; `instances` is the starting count")
    pool = _pool(raw, top, gpus)
    for inst in pool:
        inst["name"] = f"asr-{inst['port']}"
        inst["cuda_visible_devices"] = "" if inst["device"] == "cpu" else inst["device"]
    run_dir = run_dir.resolve()
    resolved = {
        **{k: top[k] for k in ("front_host", "front_port", "engine", "model", "model_cache", "balancing")},
        "config_file": str(config.resolve()), "repo": str(REPO), "run_dir": str(run_dir),
        "log_dir": str(run_dir / "logs"), "mode": mode, "gpus_found": gpus,
        "instances": pool,
        "initial_instances": top["instances"] if "instance" not in raw or "instances" in raw
        else len(pool),
        "max_instances": top["max_instances"] or len(pool),
        **{table: _merge(raw, table) for table in DEFAULTS if table},
        "python": sys.executable, "bin_dir": str(Path(sys.executable).parent),
        "user": getpass.getuser(), "group": grp.getgrgid(os.getegid()).gr_name,
        "is_root": os.geteuid() == 0,
    }
    resolved["initial_instances"] = min(resolved["initial_instances"], len(pool))
    resolved["min_instances"] = top["min_instances"] or resolved["initial_instances"]
    worker = resolved["worker"]
    if worker["stopwaitsecs"] is None:
        worker["stopwaitsecs"] = worker["graceful_timeout_s"] + 10
    scaling = resolved["scaling"]
    if scaling["drain_timeout_s"] is None:
        scaling["drain_timeout_s"] = worker["request_timeout_s"] + 30
    resolved["monitor"]["log_dir"] = resolved["monitor"]["log_dir"] or str(run_dir / "logs" / "monitor")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if mode == "local":
        resolved["supervisor_url"] = f"unix://{run_dir}/supervisor.sock"
        resolved["supervisor_conf"] = str(run_dir / "supervisord.conf")
        resolved["nginx_cmd"] = [nginx, "-p", f"{run_dir}/", "-c", str(run_dir / "nginx.conf"),
                                 "-e", str(run_dir / "logs" / "nginx-error.log")]
        resolved["nginx_pid_file"] = str(run_dir / "nginx.pid")
    else:
        resolved["supervisor_url"] = "unix:///var/run/supervisor.sock"
        resolved["supervisor_conf"] = "/etc/supervisor/supervisord.conf"
        resolved["nginx_cmd"] = [nginx]
        resolved["nginx_pid_file"] = "/run/nginx.pid"
    _check(resolved)
    return resolved


def front_url(resolved: dict) -> str:
    """Where a client on this machine reaches the fleet."""
    host = resolved["front_host"]
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{resolved['front_port']}"


def read_resolved(run_dir: Path) -> dict:
    path = run_dir / "fleet.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FleetError(f"{path} is missing: the fleet was never rendered (make serve)") from None


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Writes through a temp file and a rename: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


# --- state -----------------------------------------------------------------

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


def read_state(run_dir: Path, resolved: dict) -> dict:
    try:
        state = json.loads((run_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        state = {}
    state.setdefault("size", resolved["initial_instances"])
    state.setdefault("ejected", {})
    state.setdefault("maintenance", [])
    state.setdefault("last_scale_at", 0.0)
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


# --- rendering -------------------------------------------------------------

def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def supervisor_env(resolved: dict, inst: dict) -> str:
    """The `environment=` value for one instance (Supervisor quoting, % doubled)."""
    worker = resolved["worker"]
    env = {
        "ASR_HOST": "127.0.0.1", "ASR_PORT": inst["port"], "ASR_INSTANCE_NAME": inst["name"],
        "ASR_ENGINE": resolved["engine"], "ASR_MODEL": resolved["model"],
        "CUDA_VISIBLE_DEVICES": inst["cuda_visible_devices"],
        "ASR_MAX_UPLOAD_MB": worker["max_upload_mb"], "ASR_REQUEST_TIMEOUT": worker["request_timeout_s"],
        "PYTHONUNBUFFERED": "1",
    }
    if resolved["model_cache"]:
        env["ASR_MODEL_CACHE"] = resolved["model_cache"]
    if resolved["mode"] == "system":
        env["PATH"] = f"{resolved['bin_dir']}:/usr/local/bin:/usr/bin:/bin"
        env["HOME"] = pwd.getpwnam(resolved["user"]).pw_dir
    env.update(worker["env"])
    quoted = (f'{key}="{str(value).replace("%", "%%").replace(chr(34), "")}"' for key, value in env.items())
    return ",".join(quoted)


def render_text(template: str, resolved: dict, state: dict) -> str:
    env = _env()
    env.globals["supervisor_env"] = supervisor_env
    return env.get_template(template).render(
        fleet=resolved, state=state, members=upstream_members(resolved, state),
        active_names=[inst["name"] for inst in resolved["instances"][:state["size"]]])


def render_upstream(resolved: dict, state: dict) -> None:
    run_dir = Path(resolved["run_dir"])
    write_atomic(run_dir / "upstream.conf", render_text("nginx/upstream.conf.j2", resolved, state))


def render_all(resolved: dict, state: dict) -> list[Path]:
    """Writes fleet.json, upstream.conf and the nginx and supervisor configs."""
    run_dir = Path(resolved["run_dir"])
    for folder in (run_dir, run_dir / "logs", run_dir / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    written = [run_dir / "fleet.json", run_dir / "upstream.conf"]
    write_atomic(written[0], json.dumps(resolved, indent=1) + "\n")
    render_upstream(resolved, state)
    if resolved["mode"] == "local":
        pairs = {"nginx/nginx.conf.j2": "nginx.conf", "supervisor/supervisord.conf.j2": "supervisord.conf"}
        for template, name in pairs.items():
            write_atomic(run_dir / name, render_text(template, resolved, state))
            written.append(run_dir / name)
    return written
