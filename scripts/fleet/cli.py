"""The ASR fleet: one Nginx port in front of Gunicorn workers under supervisord.

    fleet.py [--config fleet.toml] [--run-dir run] COMMAND

render          render run/ from the fleet file (nothing started)
serve           install what is missing, render, start, wait healthy, print how to try it
stop | restart  stop the whole fleet | stop then serve
status          supervisorctl status plus every instance's health
reload          apply an edited fleet file: rolling restarts, no dropped requests
rolling-restart restart every active instance, one at a time, no dropped requests
scale N         grow or shrink the active instances (drains before stopping)
logs            the last lines of every log (and follow them on a terminal)
verify          the deployment checklist; nonzero exit when something failed
install-system  render for /etc/nginx/conf.d and /etc/supervisor/conf.d
poll            the health poller loop (scripts/health_poller.sh runs it)

FLEET_CONFIG and FLEET_RUN_DIR replace the defaults, so `make` targets can
drive a fleet other than the repository's.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from . import actions, render, serve
from . import config as fc
from . import state as fs
from .poller import poll
from .serve import tail
from .supervisor import Supervisor, ctl, probe_all
from .verify import verify

REPO = fc.REPO


def cmd_render(args) -> int:
    resolved = fc.load(args.config, args.run_dir)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    state = fs.read_state(args.run_dir, resolved)
    for path in render.render_all(resolved, state):
        print(path)
    if not (args.run_dir / "state.json").exists():
        fs.write_state(args.run_dir, state)
    return 0


def cmd_serve(args) -> int:
    if not args.no_setup:
        serve.ensure_system_packages()
    if Supervisor(fc.load(args.config, args.run_dir)).running():
        print("fleet: already running (make status; make reload applies fleet file edits)")
        return cmd_status(args)
    resolved, failed, health = serve.start(args.config, args.run_dir, args.timeout)
    if failed:
        print(f"fleet: {', '.join(failed)} not healthy; the rest keeps running (make stop)", file=sys.stderr)
        return 1
    if not health:
        return 1
    serve.print_welcome(resolved, health)
    return 0


def cmd_stop(args) -> int:
    return serve.stop(args.run_dir)


def cmd_restart(args) -> int:
    if (args.run_dir / "fleet.json").exists():
        serve.stop(args.run_dir)
    return cmd_serve(args)


def cmd_status(args) -> int:
    resolved = fc.read_resolved(args.run_dir) if (args.run_dir / "fleet.json").exists() else None
    if resolved is None or not Supervisor(resolved).running():
        print("fleet: not running (make serve)")
        return 3
    print(ctl(resolved, "status").stdout.rstrip())
    state = fs.read_state(args.run_dir, resolved)
    results = probe_all(resolved["instances"], 2)
    print(f"\n{'instance':<12}{'port':>6} {'device':<7}{'weight':>6}  {'role':<8}{'health':<9}"
          f"{'queue':>6}{'in_flight':>10}  model")
    unhealthy = 0
    for index, inst in enumerate(resolved["instances"]):
        outcome, body, error = results[inst["name"]]
        active = index < state["size"]
        role = ("ejected" if inst["name"] in state["ejected"] else "active") if active else "spare"
        unhealthy += active and outcome != "ok"
        outcome = outcome if active or outcome == "ok" else "-"
        body = body or {}
        print(f"{inst['name']:<12}{inst['port']:>6} {inst['device']:<7}{inst['weight']:>6}  {role:<8}"
              f"{outcome:<9}{body.get('queue_depth', '-'):>6}{body.get('in_flight', '-'):>10}  "
              f"{body.get('model') or error}")
    print(f"\nfront: http://{resolved['front_host']}:{resolved['front_port']}  balancing: "
          f"{resolved['balancing']}  active {state['size']} (min {resolved['min_instances']}, "
          f"max {resolved['max_instances']})")
    return 1 if unhealthy else 0


def cmd_reload(args) -> int:
    old = fc.read_resolved(args.run_dir)
    new = fc.load(args.config, args.run_dir)
    if not Supervisor(new).running():
        render.render_all(new, fs.read_state(args.run_dir, new))
        print("fleet: not running; rendered only (make serve)")
        return 0
    actions.rolling_reload(old, new)
    print("fleet: reloaded")
    return 0


def cmd_rolling_restart(args) -> int:
    resolved = fc.read_resolved(args.run_dir)
    if not Supervisor(resolved).running():
        print("fleet: not running (make serve)", file=sys.stderr)
        return 3
    names = actions.rolling_restart(resolved)
    print(f"fleet: restarted {', '.join(names)}, one at a time")
    return 0


def cmd_scale(args) -> int:
    actions.scale_to(fc.read_resolved(args.run_dir), args.size)
    print(f"fleet: {args.size} active instance(s)")
    return 0


def cmd_logs(args) -> int:
    logs = sorted((args.run_dir / "logs").glob("*.log"))
    if not logs:
        print("fleet: no logs yet")
        return 0
    follow = args.follow if args.follow is not None else sys.stdout.isatty()
    if follow:
        os.execvp("tail", ["tail", "-n", str(args.lines), "-F", *map(str, logs)])
    for path in logs:
        print(f"==> {path} <==\n{tail(path, args.lines)}\n")
    return 0


def cmd_verify(args) -> int:
    return verify(args.run_dir, args.audio)


def cmd_install_system(args) -> int:
    """Renders the fleet for the system's Nginx and Supervisor under --target."""
    resolved = fc.load(args.config, Path("/var/lib/asr-fleet"), mode="system")
    resolved["log_dir"] = "/var/log/asr-fleet"
    resolved["monitor"]["log_dir"] = "/var/log/asr-fleet/monitor"
    resolved["user"] = args.user
    render.install_system(resolved, fs.fresh_state(resolved), Path(args.target).resolve(), args.apply)
    return 0


def cmd_poll(args) -> int:
    poll(args.run_dir.resolve(), once=args.once)
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path,
                        default=Path(os.environ.get("FLEET_CONFIG", REPO / "fleet.toml")))
    parser.add_argument("--run-dir", type=Path, default=Path(os.environ.get("FLEET_RUN_DIR", REPO / "run")))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("render")
    serve = sub.add_parser("serve")
    restart = sub.add_parser("restart")
    for p in (serve, restart):
        p.add_argument("--timeout", type=float, default=0, help="seconds to wait for health")
        p.add_argument("--no-setup", action="store_true", help="never run scripts/setup.sh --system")
    for name in ("stop", "status", "reload", "rolling-restart"):
        sub.add_parser(name)
    sub.add_parser("scale").add_argument("size", type=int)
    logs = sub.add_parser("logs")
    logs.add_argument("-n", "--lines", type=int, default=30)
    logs.add_argument("--follow", action=argparse.BooleanOptionalAction, default=None)
    sub.add_parser("verify").add_argument("--audio", help="recording to transcribe (default jfk.flac)")
    install = sub.add_parser("install-system")
    install.add_argument("--target", default="/", help="root to write under (default /)")
    install.add_argument("--user", default=os.environ.get("SUDO_USER") or getpass.getuser(),
                         help="user the workers run as")
    install.add_argument("--apply", action="store_true", help="with --target /: reload nginx and supervisor")
    sub.add_parser("poll").add_argument("--once", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    handler = globals()[f"cmd_{args.command.replace('-', '_')}"]
    try:
        return handler(args)
    except fc.FleetError as error:
        print(f"fleet: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
