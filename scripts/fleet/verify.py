"""The deployment checklist of the original system (`make verify`): every
process running, every worker port on loopback only, the front port
listening, health green, the balancer reaching every instance, /fleet
served, a real recording transcribed. One `[ok]`/`[FAIL]` line per check."""

from __future__ import annotations

import collections
from pathlib import Path

import psutil
import requests

from . import state as fs
from .config import front_url, read_resolved
from .serve import SHARED_AUDIO, front_get
from .supervisor import Supervisor, probe_all


def verify(run_dir: Path, audio_path: str | None = None) -> int:
    """Runs the checklist; prints one line per check; 1 when any failed."""
    resolved = read_resolved(run_dir)
    sup = Supervisor(resolved)
    failures = []

    def check(ok: bool, what: str, detail: str = "") -> bool:
        print(f"[{'ok' if ok else 'FAIL'}] {what}{(': ' + detail) if detail else ''}")
        if not ok:
            failures.append(what)
        return ok

    if not check(sup.running(), "supervisord running", resolved["supervisor_url"]):
        return 1
    state = fs.read_state(run_dir, resolved)
    active = resolved["instances"][:state["size"]]
    states = {n: i["statename"] for n, i in sup.states().items()}
    programs = [i["name"] for i in active] + ["health-poller"]
    programs += ["nginx"] if resolved["mode"] == "local" else []
    healthy = {n for n, (outcome, _, _) in probe_all(active, 5).items() if outcome == "ok"}
    for name in programs:
        # STARTING and healthy: the model loaded faster than startsecs.
        up = states.get(name) == "RUNNING" or (states.get(name) == "STARTING" and name in healthy)
        check(up, f"process {name} running", states.get(name, "missing"))
    listeners = collections.defaultdict(set)
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN:
            listeners[conn.laddr.port].add(conn.laddr.ip)
    for inst in active:
        ips = listeners.get(inst["port"], set())
        check(bool(ips) and ips <= {"127.0.0.1", "::1"}, f"port {inst['port']} listening on loopback only",
              ", ".join(sorted(ips)) or "not listening")
    check(resolved["front_port"] in listeners, f"front port {resolved['front_port']} listening",
          ", ".join(sorted(listeners.get(resolved["front_port"], []))))
    results = probe_all(active, 5)
    for inst in active:
        outcome, _, error = results[inst["name"]]
        check(outcome == "ok", f"{inst['name']} /health green", error)
    members = [m for m in fs.upstream_members(resolved, state) if not m["down"]]
    seen = collections.Counter()
    try:
        for _ in range(2 * sum(m["weight"] for m in members)):
            seen[front_get(resolved, "/health").headers.get("X-ASR-Worker")] += 1
        missing = [m["name"] for m in members if not seen[m["name"]]]
        check(not missing, "balancer spreads requests over every instance",
              ", ".join(f"{k}={v}" for k, v in sorted(seen.items(), key=str)) +
              (f"; never reached {', '.join(missing)}" if missing else ""))
        check(front_get(resolved, "/fleet").ok, "fleet status served at /fleet")
    except OSError as error:
        check(False, "balancer reachable", str(error))
    audio = Path(audio_path) if audio_path else SHARED_AUDIO / "jfk.flac"
    if check(audio.exists(), "test recording present", str(audio)):
        try:
            with audio.open("rb") as handle:
                response = requests.post(front_url(resolved) + "/asr", files={"file": handle},
                                         timeout=resolved["worker"]["request_timeout_s"])
            json_body = response.headers.get("Content-Type", "").startswith("application/json")
            body = response.json() if json_body else {}
            worker, text = response.headers.get("X-ASR-Worker"), body.get("text", "")
            check(response.ok and body.get("code") == 0 and bool(text.strip()),
                  "a real recording transcribed", f"{response.status_code} by {worker}: {text[:60]!r}")
        except (OSError, ValueError) as error:
            check(False, "a real recording transcribed", str(error))
    print(f"\nverify: {'all checks passed' if not failures else 'FAILED: ' + '; '.join(failures)}")
    return 1 if failures else 0
