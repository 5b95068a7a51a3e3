"""Load test an ASR worker or fleet: N users send real recordings, we measure.

    .venv/bin/python scripts/loadtest.py --concurrency 4 --requests 10
    make loadtest ARGS="--concurrency 8 --duration 60 --endpoint /asr_simple"

Each user is a thread with its own keep-alive session that sends the
recordings in a mix (user i starts at file i) until it has sent --requests,
or until --duration has passed. Every run is bounded: at most --max-requests
requests and --max-duration seconds, and each request at most --timeout.
Only loopback targets unless --allow-remote.

The report (summary.json, report.txt, requests.csv, loadtest.png) goes to
--out. The exit status is 1 when the success rate is below --min-success,
2 for a bad command line or a refused target.

For benchmarks: `run_load(LoadConfig(...)) -> LoadResult` and
`summarize(result) -> dict` are the importable core; nothing in them prints.
They live in the loadtest package: config (inputs), client (one request),
core (the run), monitor (sampler, progress), stats (figures) and report
(text, files, PNG); this module is the command line and re-exports them.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from . import report
from .client import Sample, request_id, send
from .config import (
    AUDIO_EXTENSIONS,
    DEFAULT_AUDIO,
    ENDPOINTS,
    MAX_CONCURRENCY,
    MAX_FILE_BYTES,
    MAX_FILES,
    NO_HEADER,
    OPENAI_ENDPOINT,
    REPO,
    AudioFile,
    LoadConfig,
    audio_paths,
    check_target,
    load_audio,
)
from .core import LoadResult, run_load
from .stats import latency_stats, percentile, summarize

__all__ = ["AUDIO_EXTENSIONS", "DEFAULT_AUDIO", "ENDPOINTS", "MAX_CONCURRENCY", "MAX_FILES",
           "MAX_FILE_BYTES", "NO_HEADER", "OPENAI_ENDPOINT", "REPO", "AudioFile", "LoadConfig",
           "LoadResult", "Sample", "audio_paths", "check_target", "latency_stats", "load_audio", "main",
           "parse_args", "percentile", "request_id", "run_load", "send", "summarize"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:5002", help="the fleet (Nginx) or one worker")
    p.add_argument("--endpoint", default="/asr", choices=ENDPOINTS)
    p.add_argument("--files", default=str(DEFAULT_AUDIO),
                   help="a recording, or a folder whose audio files are sent in a mix (subfolders skipped)")
    p.add_argument("--concurrency", "-c", type=int, default=4, help="simultaneous users")
    p.add_argument("--requests", "-n", type=int, default=None,
                   help="requests per user (10 when neither this nor --duration is given)")
    p.add_argument("--duration", "-d", type=float, default=None,
                   help="seconds to keep sending; with --requests, whichever ends first")
    p.add_argument("--delay", type=float, default=0.0, help="seconds each user waits between requests")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--lang", default=None, help="language field (lang, or language for the OpenAI endpoint)")
    p.add_argument("--model", default="whisper-1", help="the OpenAI endpoint's model field")
    p.add_argument("--warmup", type=int, default=0, help="requests sent first and not counted")
    p.add_argument("--max-requests", type=int, default=10_000, help="hard cap on measured requests")
    p.add_argument("--max-duration", type=float, default=3600.0, help="hard cap on the run's seconds")
    p.add_argument("--out", default=None, help="report folder (default reports/loadtest-<timestamp>)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--min-success", type=float, default=0.0,
                   help="exit 1 when the success rate (0-1) is below this; 0 only reports")
    p.add_argument("--allow-remote", action="store_true", help="allow a target that is not loopback")
    args = p.parse_args(argv)
    if not 0 <= args.min_success <= 1:
        p.error("--min-success is a fraction from 0 to 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    config = LoadConfig(
        url=args.url, endpoint=args.endpoint, files=[Path(args.files)], concurrency=args.concurrency,
        requests=args.requests, duration=args.duration, delay=args.delay, timeout=args.timeout,
        lang=args.lang, model=args.model, warmup=args.warmup, max_requests=args.max_requests,
        max_duration=args.max_duration, allow_remote=args.allow_remote, progress=not args.no_progress)
    try:
        config.validate()
        audio_paths(args.files)
    except ValueError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else \
        REPO / "reports" / f"loadtest-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    plan = (f"{config.per_user} requests per user" if config.per_user else "") + \
        (" or " if config.per_user and config.duration else "") + \
        (f"{config.duration:g} s" if config.duration else "")
    print(f"load test: {config.url}{config.endpoint}, {config.concurrency} users, {plan}", file=sys.stderr)
    try:
        result = run_load(config)
    except ValueError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    summary = summarize(result)
    paths = report.write_report(result, summary, out, png=not args.no_png)
    print(report.render_text(summary))
    print("report: " + ", ".join(str(p) for p in paths.values()))
    rate = summary["requests"]["success_rate"]
    if rate < args.min_success:
        print(f"loadtest: success rate {rate:.2%} is below --min-success {args.min_success:.2%}",
              file=sys.stderr)
        return 1
    return 0
