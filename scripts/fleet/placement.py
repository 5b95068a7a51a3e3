"""Where instances run: the GPUs nvidia-smi lists, and each instance of the
fleet file's pool on a GPU index or the CPU (a GPU the machine lacks puts
the instance on the CPU, with a warning, rather than failing the fleet)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from .errors import FleetError

INSTANCE_KEYS = {"port", "device", "weight", "env", "max_concurrent"}


def nvidia_smi(*args: str) -> subprocess.CompletedProcess | None:
    """nvidia-smi's answer to `args`; None without the tool or when it cannot start."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(["nvidia-smi", *args], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_count() -> int:
    """GPUs nvidia-smi lists; 0 without the tool or a driver."""
    out = nvidia_smi("-L")
    return 0 if out is None else sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def query_gpus(*fields: str) -> list[dict[str, str]]:
    """One {field: value} per GPU from `nvidia-smi --query-gpu=<fields>` (CSV
    without header or units); [] without the tool or a driver (its error text
    comes with a non-zero exit), a line of another shape skipped."""
    out = nvidia_smi(f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits")
    if out is None or out.returncode:
        return []
    rows = [[value.strip() for value in line.split(",")] for line in out.stdout.splitlines()]
    return [dict(zip(fields, row)) for row in rows if len(row) == len(fields)]


def _device(value, gpus: int, where: str, missing: str = "running it on the CPU") -> str:
    if value == "cpu":
        return "cpu"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FleetError(f"{where}: device must be a GPU index or \"cpu\", not {value!r}")
    if value >= gpus:
        print(f"fleet: {where}: GPU {value} not present ({gpus} found); {missing}", file=sys.stderr)
        return "cpu"
    return str(value)


def gpu_indexes(top: dict, gpus: int) -> list[int]:
    """The GPUs the shorthand spreads instances over."""
    if top["gpus"] == "auto":
        return list(range(gpus))
    if isinstance(top["gpus"], list):
        # A missing GPU is left out of the spread: the instances go to the others.
        devices = [_device(g, gpus, "gpus", "leaving it out") for g in top["gpus"]]
        return [int(d) for d in devices if d != "cpu"]
    raise FleetError(f"gpus must be \"auto\" or a list of GPU indexes, not {top['gpus']!r}")


def pool_of(raw: dict, top: dict, gpus: int, indexes: list[int]) -> list[dict]:
    """The instance pool: explicit [[instance]] tables, or the shorthand."""
    if "instance" in raw:
        pool = []
        for index, entry in enumerate(raw["instance"]):
            where = f"[[instance]] #{index + 1}"
            unknown = sorted(set(entry) - INSTANCE_KEYS)
            if unknown or "port" not in entry:
                raise FleetError(f"{where}: needs port; allowed keys are {', '.join(sorted(INSTANCE_KEYS))}")
            env = entry.get("env", {})
            if not isinstance(env, dict):
                raise FleetError(f"{where}: env must be a table of VARIABLE = \"value\"")
            pool.append({"port": entry["port"], "weight": entry.get("weight", 1), "env": env,
                         "device": _device(entry.get("device", "cpu"), gpus, where),
                         "max_concurrent": entry.get("max_concurrent")})
        return pool
    size = top["max_instances"] or top["instances"]
    return [{"port": top["base_port"] + i, "weight": 1, "env": {},
             "device": str(indexes[i % len(indexes)]) if indexes else "cpu"} for i in range(size)]
