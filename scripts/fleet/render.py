"""Rendering: the resolved fleet and its state through the Jinja2 templates
under deploy/ into the run folder (or a system-wide install), and checking a
rendered Nginx config before anything uses it."""

from __future__ import annotations

import json
import math
import pwd
import subprocess
import tempfile
from pathlib import Path

import jinja2

from .config import REPO, FleetError, supervisor_value, write_atomic
from .state import upstream_members

TEMPLATES = REPO / "deploy"


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def supervisor_env(resolved: dict, inst: dict) -> str:
    """The `environment=` value for one instance (Supervisor quoting, % doubled):
    the fleet's settings, then [worker.env], then the instance's own env.
    A GPU instance also gets CUDA_DEVICE_ORDER=PCI_BUS_ID: CUDA numbers GPUs
    fastest first by default, nvidia-smi (whose index the fleet file uses)
    by PCI bus, and on a host with mixed GPUs the two differ."""
    worker = resolved["worker"]
    env = {
        "ASR_HOST": "127.0.0.1", "ASR_PORT": inst["port"], "ASR_INSTANCE_NAME": inst["name"],
        "ASR_ENGINE": resolved["engine"], "ASR_MODEL": resolved["model"],
        "CUDA_VISIBLE_DEVICES": inst["cuda_visible_devices"],
        **({} if inst["device"] == "cpu" else {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
        "ASR_MAX_UPLOAD_MB": worker["max_upload_mb"], "ASR_REQUEST_TIMEOUT": worker["request_timeout_s"],
        "PYTHONUNBUFFERED": "1",
        # Every instance shares one job store: the segment queue of long
        # recordings and the jobs, kept across restarts (app/jobs/).
        "ASR_JOB_DB": worker["job_db"] or f"{resolved['run_dir']}/jobs.db",
        "ASR_MAX_SYNC_SECONDS": worker["max_sync_s"], "ASR_JOB_RETENTION_SECONDS": worker["job_retention_s"],
    }
    if "queue_max_items" in worker:
        env["ASR_QUEUE_MAX_ITEMS"] = worker["queue_max_items"]
    # The same number as Nginx's max_conns for this server (upstream.conf).
    env["ASR_MAX_CONCURRENT"] = inst["max_concurrent"]
    if inst["cpu_threads"]:
        # This instance's share of the cores (capacity.py).
        env["ASR_CPU_THREADS"] = inst["cpu_threads"]
    if resolved["model_cache"]:
        env["ASR_MODEL_CACHE"] = resolved["model_cache"]
    if resolved["mode"] == "system":
        env["PATH"] = f"{resolved['bin_dir']}:/usr/local/bin:/usr/bin:/bin"
        env["HOME"] = pwd.getpwnam(resolved["user"]).pw_dir
    env.update(worker["env"])
    env.update(inst.get("env", {}))
    return ",".join(supervisor_value(key, value) for key, value in env.items())


def nginx_rate(per_second: float) -> str:
    """limit_req_zone's rate: whole requests per second, else per minute."""
    if per_second >= 1 and float(per_second).is_integer():
        return f"{int(per_second)}r/s"
    return f"{max(1, round(per_second * 60))}r/m"


def retry_after(per_second: float) -> int:
    """Seconds until a rate-limited client may send again: one slot's worth."""
    return max(1, math.ceil(1 / per_second))


def render_text(template: str, resolved: dict, state: dict) -> str:
    env = _env()
    env.globals["supervisor_env"] = supervisor_env
    env.globals["nginx_rate"] = nginx_rate
    env.globals["retry_after"] = retry_after
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


def check_nginx(resolved: dict, state: dict) -> None:
    """Renders the Nginx config into a scratch folder and runs `nginx -t` on it,
    so a fleet file Nginx would refuse is refused before the run folder (and
    the running Nginx) sees it."""
    if resolved["mode"] != "local":
        return
    with tempfile.TemporaryDirectory(prefix="fleet-check-") as scratch:
        trial = {**resolved, "run_dir": scratch, "log_dir": f"{scratch}/logs"}
        Path(scratch, "logs").mkdir()
        Path(scratch, "tmp").mkdir()
        write_atomic(Path(scratch, "upstream.conf"), render_text("nginx/upstream.conf.j2", trial, state))
        write_atomic(Path(scratch, "nginx.conf"), render_text("nginx/nginx.conf.j2", trial, state))
        test = subprocess.run([resolved["nginx_cmd"][0], "-t", "-q", "-p", f"{scratch}/", "-c",
                               f"{scratch}/nginx.conf", "-e", f"{scratch}/logs/nginx-error.log"],
                              capture_output=True, text=True)
        if test.returncode != 0:
            reason = test.stderr.strip().replace(scratch, "<run>")
            raise FleetError(f"nginx -t refused the new config, nothing changed: {reason}")


def install_system(resolved: dict, state: dict, target: Path, apply: bool) -> None:
    """Renders the fleet for the system's Nginx and Supervisor under `target`."""
    files = {
        "etc/nginx/conf.d/asr-fleet.conf": render_text("nginx/asr-fleet.conf.j2", resolved, state),
        "etc/supervisor/conf.d/asr-fleet.conf": render_text("supervisor/programs.conf.j2", resolved, state),
        "var/lib/asr-fleet/upstream.conf": render_text("nginx/upstream.conf.j2", resolved, state),
        "var/lib/asr-fleet/fleet.json": json.dumps(resolved, indent=1) + "\n",
        "var/lib/asr-fleet/state.json": json.dumps(state, indent=1) + "\n",
    }
    (target / "var/log/asr-fleet").mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        print(f"wrote {path}")
    steps = [["nginx", "-t"], ["nginx", "-s", "reload"],
             ["supervisorctl", "reread"], ["supervisorctl", "update"]]
    if apply and target == Path("/"):
        for step in steps:
            subprocess.run(step, check=True)
        print("install-system: applied")
    else:
        print("install-system: rendered; apply as root with:\n  " + " && ".join(" ".join(s) for s in steps))
