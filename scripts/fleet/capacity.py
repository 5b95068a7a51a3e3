"""The machine's capacity: the cores the fleet may use, each instance's share
of them and its admission limit, and whether the machine can run one more
instance.

A CPU instance gets ASR_CPU_THREADS = max(1, cores // CPU instances at
max_instances), so the fleet at its largest asks for no more model threads
than there are cores: oversubscribed cores make every instance slower, and
the context switches make the whole fleet slower than fewer instances would.
GPU instances keep the engine's default. The autoscaler adds a CPU instance
only when the cores have room for its threads.
"""

from __future__ import annotations

import os

import psutil

from .config import FleetError


def detect_cores(setting) -> int:
    """`cpu_cores` from the fleet file: "auto" is the CPUs this process may
    run on (a cpuset or `taskset` counts, unlike os.cpu_count())."""
    if setting == "auto":
        return len(os.sched_getaffinity(0)) or 1
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise FleetError(f"cpu_cores must be \"auto\" or a positive integer, not {setting!r}")
    return setting


# instances = "auto" on a CPU-only host: one instance per core, up to this
# many; past it the cores are shared as threads (ASR_CPU_THREADS) instead,
# since each instance holds its own copy of the model (~0.5 GB for Whisper
# base). Measured on 2 cores: 2 instances of one thread each served 1.52x
# one instance of two (docs/benchmarks.md, scaling).
MAX_AUTO_CPU_INSTANCES = 4


def auto_instances(gpus_used: int, cores: int) -> int:
    """The instance count for instances = "auto": one per GPU the fleet uses
    (each batches its own requests), else one per core up to the cap."""
    if gpus_used:
        return gpus_used
    return max(1, min(cores, MAX_AUTO_CPU_INSTANCES))


def apply_budget(resolved: dict, cores: int) -> None:
    """Sets each instance's `max_concurrent` (requests it admits; Nginx's
    max_conns) and `cpu_threads` (CPU instances only; None for GPUs)."""
    worker, pool = resolved["worker"], resolved["instances"]
    cpu_at_max = sum(1 for inst in pool[:resolved["max_instances"]] if inst["device"] == "cpu")
    share = max(1, cores // max(cpu_at_max, 1))
    for inst in pool:
        on_cpu = inst["device"] == "cpu"
        default = worker["max_concurrent"] if on_cpu else worker["max_concurrent_gpu"]
        limit = inst.get("max_concurrent") or default
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise FleetError(f"{inst['name']}: max_concurrent must be a positive integer, not {limit!r}")
        inst["max_concurrent"] = limit
        env = {**worker["env"], **inst.get("env", {})}
        # Nginx and the poller find a worker by what the fleet file says: one
        # on another port or address would be invisible to both.
        for key, why in (("ASR_PORT", "set the instance's port instead"),
                         ("ASR_HOST", "workers listen on loopback only"),
                         ("ASR_INSTANCE_NAME", "the name comes from the port")):
            if key in env:
                raise FleetError(f"{inst['name']}: {key} is the fleet's to set ({why})")
        if "ASR_MAX_CONCURRENT" in env:
            raise FleetError(f"{inst['name']}: set max_concurrent ([worker] or [[instance]]), not "
                             "ASR_MAX_CONCURRENT: Nginx's max_conns must match it")
        # An explicit ASR_CPU_THREADS (worker or instance env) wins, and the
        # autoscaler counts what the instance really runs.
        explicit = env.get("ASR_CPU_THREADS")
        threads = share
        if explicit is not None:
            try:
                threads = int(str(explicit).strip())
            except ValueError:
                threads = 0
            if threads < 1:
                raise FleetError(f"{inst['name']}: ASR_CPU_THREADS must be a positive integer, not {explicit!r}")
        inst["cpu_threads"] = threads if on_cpu else None
    resolved["cores"] = cores


def busy_threads(resolved: dict, active: list[dict], bodies: dict[str, dict | None]) -> int:
    """Model threads the busy CPU instances are using: an instance with work
    in hand (or that does not say: no answer counts as busy) uses its share."""
    total = 0
    for inst in active:
        if inst["device"] != "cpu":
            continue
        body = bodies.get(inst["name"])
        if body is None or body.get("busy") or body.get("in_flight") or body.get("queue_depth"):
            total += inst["cpu_threads"] or 1
    return total


def room_for(resolved: dict, spare: dict, busy: int, host_cpu_percent: float | None) -> tuple[bool, str]:
    """Whether the machine can run `spare` as well: always for a GPU
    instance; for a CPU one only when the busy instances leave enough cores
    for its threads and the host is not already saturated (other processes
    count too). Queued requests are never a reason by themselves: more
    instances on saturated cores split the same cores, only slower."""
    if spare["device"] != "cpu":
        return True, f"{spare['name']} runs on GPU {spare['device']}"
    cores, need = resolved["cores"], spare["cpu_threads"] or 1
    if busy + need > cores:
        return False, (f"cores saturated: busy instances use {busy} of {cores} cores, "
                       f"{spare['name']} needs {need} more")
    limit = resolved["scaling"]["cpu_saturated_percent"]
    if host_cpu_percent is not None and host_cpu_percent >= limit:
        return False, f"host CPU at {host_cpu_percent:.0f}% (saturated from {limit}%)"
    return True, f"{cores - busy} of {cores} cores free"


def host_cpu_percent() -> float:
    """Whole-machine CPU use since the previous call (psutil keeps the mark)."""
    return psutil.cpu_percent(interval=None)
