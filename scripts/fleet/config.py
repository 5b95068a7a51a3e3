"""The fleet description: fleet.toml in, one checked and resolved dict out.

`load()` reads and checks fleet.toml and resolves it into one plain dict (the
instance pool with ports, devices, weights and env, every knob with its
default), saved as run/fleet.json by render.py: the poller, the monitor and
the CLI all read that file, so an edit to fleet.toml takes effect only on
`make reload`. Run-time state is state.py's; rendering is render.py's.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import sys
import tomllib
from pathlib import Path

from .errors import FleetError
from .placement import gpu_count, gpu_indexes, pool_of

REPO = Path(__file__).resolve().parents[2]
ENGINES = ("auto", "funasr", "whisper", "pocketsphinx")
BALANCING = ("round_robin", "least_conn")
METRICS = ("utilization", "in_flight", "queue_depth")

# Every knob of every table, with its default. Unknown keys are an error, so
# a typo in fleet.toml never silently keeps a default.
DEFAULTS: dict[str, dict] = {
    "": {
        "front_host": "127.0.0.1", "front_port": 5002, "engine": "auto",
        "model": "", "model_cache": "", "instances": "auto", "base_port": 8001,
        "gpus": "auto", "min_instances": None, "max_instances": None, "balancing": "least_conn",
        "cpu_cores": "auto",
    },
    "worker": {
        "max_upload_mb": 100, "request_timeout_s": 300, "queue_max_items": 256,
        "max_concurrent": 2, "max_concurrent_gpu": 8, "graceful_timeout_s": 30, "startsecs": 20,
        "stopwaitsecs": None, "startretries": 3, "log_maxbytes": "50MB", "log_backups": 5, "env": {},
        # Long recordings (app/jobs/): the shared SQLite store ("" = jobs.db in
        # the run folder), the longest synchronous wait, job retention.
        "job_db": "", "max_sync_s": 1800, "job_retention_s": 86400,
    },
    "nginx": {
        "worker_processes": "auto", "max_fails": 0, "fail_timeout_s": 10, "next_upstream_tries": 3,
        "retry_after_s": 1,
        "connect_timeout_s": 2, "read_timeout_margin_s": 60, "keepalive": 16,
        "keepalive_timeout_s": 60, "client_body_timeout_s": 60, "body_buffer_mb": 16,
        "rate_limit_per_s": 0, "rate_limit_burst": 20,
    },
    "health": {
        "interval_s": 2.0, "timeout_s": 2.0, "eject_after": 3, "restore_after": 2,
        "restart_after": 10, "max_load_s": 600, "stuck_after_s": 60, "stuck_factor": 3,
        "fatal_retry_s": 60,
    },
    "scaling": {
        "enabled": True, "metric": "utilization", "high_mark": 0.9, "low_mark": 0.1,
        "high_for_s": 30, "low_for_s": 120, "cooldown_s": 60, "drain_timeout_s": None,
        "cpu_saturated_percent": 85,
    },
    "monitor": {"interval_s": 2.0, "p95_alert_ms": 10000, "error_rate_alert": 0.05, "log_dir": ""},
}
# Knobs that must be positive numbers (rate_limit_per_s: 0 means off).
POSITIVE = {"worker": ("max_upload_mb", "request_timeout_s", "queue_max_items", "graceful_timeout_s",
                       "max_concurrent", "max_concurrent_gpu", "max_sync_s", "job_retention_s"),
            "nginx": ("client_body_timeout_s", "rate_limit_burst", "retry_after_s", "body_buffer_mb"),
            "health": ("stuck_after_s", "stuck_factor", "fatal_retry_s")}


def _account_name(uid: int) -> str:
    """The user's name; its number where the passwd file has none (a
    container run as an arbitrary uid: never root, so no Nginx `user`
    directive names it)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


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


def supervisor_value(key: str, value) -> str:
    """`KEY="value"` for Supervisor's `environment=`, % doubled (its config
    expands %(name)s), in single quotes when the value holds a double quote.
    FleetError for what Supervisor cannot pass on unchanged: it strips quote
    characters at either end of a value, reads " ;" and " #" as the start of
    a comment, and has no escape for a value holding both kinds of quote."""
    text = str(value)
    quote = "'" if '"' in text else '"'
    problem = ("is not a variable name" if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else
               "holds a line break" if "\n" in text or "\r" in text else
               "holds both ' and \"" if quote in text else
               "starts or ends with a quote" if text and (text[0] in "'\"" or text[-1] in "'\"") else
               "holds ; or # after a space" if re.search(r"\s[;#]", text) else None)
    if problem:
        raise FleetError(f"env {key} = {text!r} {problem}: Supervisor cannot pass it on unchanged")
    return f"{key}={quote}{text.replace('%', '%%')}{quote}"


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
    for table, keys in POSITIVE.items():
        for key in keys:
            value = resolved[table][key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise FleetError(f"{table}.{key} must be a positive number, not {value!r}")
    for env in [resolved["worker"]["env"]] + [inst["env"] for inst in pool]:
        for key, value in env.items():
            supervisor_value(key, value)
    rate = resolved["nginx"]["rate_limit_per_s"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0:
        raise FleetError(f"nginx.rate_limit_per_s must be 0 (off) or a positive number, not {rate!r}")
    if 0 < rate < 1 / 60:
        # Nginx's slowest rate is 1r/m: a lower one would silently allow more than asked.
        raise FleetError(f"nginx.rate_limit_per_s must be 0 (off) or at least 1/60 (one a minute), "
                         f"not {rate!r}")
    worker = resolved["worker"]
    if worker["stopwaitsecs"] <= worker["graceful_timeout_s"]:
        raise FleetError("worker.stopwaitsecs must exceed worker.graceful_timeout_s: Supervisor "
                         "would SIGKILL a worker still finishing its queue")


def load(config: Path, run_dir: Path, *, mode: str = "local", gpus: int | None = None,
         cores: int | None = None) -> dict:
    """Reads fleet.toml and returns the resolved fleet (what run/fleet.json holds);
    `gpus` and `cores` replace what the machine has (tests)."""
    from . import capacity  # it needs FleetError from here
    try:
        raw = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise FleetError(f"cannot read {config}: {error}") from None
    gpus = gpu_count() if gpus is None else gpus
    top = _merge(raw, "")
    if isinstance(top["instances"], list):
        raise FleetError("explicit instances are [[instance]] tables; `instances` is the starting count")
    cores = cores or capacity.detect_cores(top["cpu_cores"])
    indexes = [] if "instance" in raw else gpu_indexes(top, gpus)
    if top["instances"] == "auto":
        top["instances"] = len(raw["instance"]) if "instance" in raw else capacity.auto_instances(len(indexes), cores)
    elif isinstance(top["instances"], bool) or not isinstance(top["instances"], int):
        raise FleetError(f"instances must be \"auto\" or a number, not {top['instances']!r}")
    pool = pool_of(raw, top, gpus, indexes)
    for inst in pool:
        inst["name"] = f"asr-{inst['port']}"
        inst["cuda_visible_devices"] = "" if inst["device"] == "cpu" else inst["device"]
    run_dir = run_dir.resolve()
    for what, path in (("the repository", REPO), ("the run folder", run_dir), ("Python", Path(sys.executable))):
        # Supervisor's config reads % as a format and splits commands at spaces.
        if re.search(r"[%\s]", str(path)):
            raise FleetError(f"{what} is at {str(path)!r}: the fleet cannot run from a path with '%' or "
                             "spaces in it (Supervisor's config format); move or link it elsewhere")
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
        # Whom this process runs as, not $USER (`su` keeps the caller's): as
        # root, Nginx's `user` directive names it and its workers must read the run folder.
        "user": _account_name(os.geteuid()), "group": _group_name(os.getegid()),
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
    capacity.apply_budget(resolved, cores)
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
