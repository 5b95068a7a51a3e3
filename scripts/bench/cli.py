"""Benchmarks: measure the serving stack side by side and regenerate docs/benchmarks.md.

    make bench                               # everything, 5 rounds: longer than 3 rounds took (not timed)
    make bench ARGS="--quick"                # one round, fewer requests, ~5 min
    make bench ARGS="--only overhead,batching"
    make bench ARGS="--only peers"           # our fleet against FunASR's server and faster-whisper-server;
                                             # installs them into .cache/peers/ on its first run

Every figure is a ratio of two setups measured in alternating rounds within
one run, so it holds on a noisy machine; the document gives each with its
band over the round pairs (bench.stats), from five rounds by default. Each
benchmark starts what it needs (a fleet through scripts/fleet.py with its own
run folder and ports, or a direct Gunicorn worker) and stops it after, on
loopback only. The raw
figures go to docs/benchmarks.json; a run of a subset replaces those
benchmarks there and leaves the others' last figures in the document.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
import traceback
from pathlib import Path

from . import doc, env, fanout, gpu, http, models, peers, profile, vad, whisper
from .lab import Lab

BENCHMARKS = {
    "overhead": http.overhead,
    "scaling": http.scaling,
    "batching": models.batching,
    "balancing": http.balancing,
    "rtf": models.rtf,
    "whisper_stack": whisper.stack,
    "profile": profile.profile,
    "fanout": fanout.fanout,
    "vad": vad.vad,
    "peers": peers.peers,
}
DOC = env.REPO / "docs" / "benchmarks.md"
# Rounds per comparison in a published run: enough for a per-round band (min, median, max)
# that a noisy round cannot pass off as a difference.
ROUNDS = 5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--quick", action="store_true", help="one round, fewer requests: a smoke run")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"alternating rounds per setup (default {ROUNDS}, quick 1)")
    p.add_argument("--concurrency", type=int, default=4, help="users for the overhead and profile runs")
    p.add_argument("--engine", default="whisper-base", choices=sorted(env.ENGINES),
                   help="the model behind the fleets and the in-process pipeline (overhead, scaling, "
                        "balancing); the default is what an offline fleet serves")
    p.add_argument("--out", default=str(DOC), help="the Markdown document to regenerate")
    p.add_argument("--work", default=None, help="scratch folder (default reports/bench-<timestamp>)")
    p.add_argument("--fresh", action="store_true", help="forget figures of benchmarks not run now")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite the document from the stored figures "
                        "(after editing bench/doc.py)")
    args = p.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in BENCHMARKS]
    if unknown or not args.only:
        p.error(f"--only: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(BENCHMARKS)}")
    args.rounds = args.rounds or (1 if args.quick else ROUNDS)
    args.nproc = env.machine()["nproc"] or 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "make bench" + (f' ARGS="{shlex.join(argv if argv is not None else sys.argv[1:])}"'
                              if (argv if argv is not None else sys.argv[1:]) else "")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = Path(args.work) if args.work else env.REPO / "reports" / f"bench-{stamp}"
    out = Path(args.out)
    store = out.with_suffix(".json")
    previous = {} if args.fresh or not store.exists() else json.loads(store.read_text())
    if args.render_only:
        run = previous.get("run") or {}
        if not previous.get("results") or not run:
            print(f"bench: nothing stored in {store} to render", file=sys.stderr)
            return 2
        out.write_text(doc.render(previous["results"], run["machine"], run["command"], run["seconds"]))
        print(f"bench: rewrote {out} from {store}", file=sys.stderr)
        return 0
    machine = env.machine()
    print(f"bench: {', '.join(args.only)} on {machine['nproc']} x {machine['cpu']}, {gpu.describe(machine)}; "
          f"scratch in {work}",
          file=sys.stderr, flush=True)
    results, failed = dict(previous.get("results", {})), []
    started = time.monotonic()
    with Lab(work) as lab:
        for name in args.only:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                with gpu.watch() as gpu_samples:  # what the GPUs did during this benchmark's load
                    result = BENCHMARKS[name](lab, args)
                if gpu_samples:
                    result["gpu"] = gpu.summarise(gpu_samples)
            except Exception as error:  # noqa: BLE001 - one broken benchmark must not lose the others
                traceback.print_exc()
                failed.append(name)
                result = {"name": name, "skipped": f"failed: {type(error).__name__}: {error}"[:400]}
            result.update(command=command, quick=args.quick, rounds=args.rounds, machine=machine,
                          seconds=round(time.monotonic() - t0, 1))
            results[name] = result
            print(f"bench: {name} done in {result['seconds']:.0f} s", file=sys.stderr, flush=True)
    total = time.monotonic() - started
    ordered = {name: results[name] for name in BENCHMARKS if name in results}
    run = {"command": command, "seconds": round(total, 1), "machine": machine}
    store.write_text(json.dumps({"run": run, "results": ordered}, indent=1, default=str) + "\n")
    out.write_text(doc.render(ordered, machine, command, total))
    print(f"bench: wrote {out} and {store} in {total / 60:.1f} min", file=sys.stderr)
    return 1 if failed else 0
