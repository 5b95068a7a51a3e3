"""Profile one worker under load with py-spy: where its CPU and its requests' time go.

Two py-spy passes over the Gunicorn worker process (and its children, where
pocketsphinx decodes) while the load test keeps N users busy: on-CPU samples
only, then every thread's samples (--idle) for the wait times. Samples are
put in request-path buckets by the frames they hold; a bucket's cost per
request is its samples / rate / requests finished during the pass.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil
import requests

from loadtest.config import LoadConfig
from loadtest.core import run_load

from .env import FULL_MODEL, MIXED, REPO, TINY_MODEL, audio_set, ensure_model
from .http import http_run
from .lab import Lab
from .steps import step_costs

OPENAI = "/v1/audio/transcriptions"
RATE = 100  # py-spy samples per second per thread
# On-CPU buckets, first match wins: (label, any of these substrings in the stack).
CPU_BUCKETS = [
    ("engine: pocketsphinx decoder (child process)", ("_decoder_loop",)),
    ("engine: model call (inference thread)", ("Batcher._run_batch",)),
    ("VAD: Silero in the handler thread", ("Segmenter.split",)),
    ("decode: resample to 16 kHz (soxr)", ("_resample (app/audio.py",)),
    ("decode: ffmpeg pipe", ("_decode_with_ffmpeg",)),
    ("decode: read + downmix (soundfile, numpy)", ("decode (app/audio.py",)),
    ("upload: multipart parse + body read", ("formparser", "_load_form_data", "upload (app/routers/common.py")),
    ("response: body + SRT + JSON", ("_original_body", "formats.py", "json/provider", "make_response")),
    ("hooks: request ID, metrics, log line", ("app/__init__.py", "app/metrics.py", "logging/")),
    ("gunicorn + Flask plumbing", ("gunicorn/", "flask/", "werkzeug/")),
]
# Named "engine: ..." so that the findings count it with the model call.
UNSAMPLED = "engine: native compute threads (process CPU time in no py-spy sample)"
WAIT_BUCKETS = [  # where a handler thread's wall time goes (--idle pass)
    ("waiting for the model (queue + batch + inference)", ("wait_all",)),
    ("VAD", ("Segmenter.split",)),
    ("decode", ("decode (app/audio.py",)),
    ("upload read + multipart parse", ("formparser", "_load_form_data", "upload (app/routers/common.py")),
    ("everything else in the handler", ("ThreadWorker.handle_request",)),
]


def _record(pid: int, seconds: float, out: Path, idle: bool) -> collections.Counter:
    cmd = [str(REPO / ".venv" / "bin" / "py-spy"), "record", "--pid", str(pid), "-d", str(int(seconds)),
           "-r", str(RATE), "-f", "raw", "--threads", "--subprocesses", "--nonblocking", "-o", str(out)]
    if idle:
        cmd.append("--idle")
    subprocess.run(cmd, check=True, capture_output=True, timeout=seconds + 60)
    stacks: collections.Counter = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def _requests_done(url: str) -> int:
    return requests.get(url + "/stats", timeout=5).json()["total_requests"]


def _bucket(stacks: collections.Counter, buckets, requests_done: int, only=None) -> list[dict]:
    totals: collections.Counter = collections.Counter()
    for stack, n in stacks.items():
        if only and only not in stack:
            continue
        label = next((lab for lab, keys in buckets if any(k in stack for k in keys)), "other")
        totals[label] += n
    grand = sum(totals.values()) or 1
    return [{"what": label, "share": round(n / grand, 4), "samples": n,
             "ms_per_request": round(n * 1000 / RATE / max(requests_done, 1), 1)}
            for label, n in sorted(totals.items(), key=lambda kv: -kv[1])]


def _cpu_seconds(pid: int) -> float:
    """CPU time of the worker process and its children (pocketsphinx's decoder) so far."""
    processes = [psutil.Process(pid)]
    processes += processes[0].children(recursive=True)
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _with_unsampled(buckets: list[dict], process_ms: float) -> list[dict]:
    """py-spy samples Python threads only: compute in native threads of the
    library's own (CTranslate2's OpenMP pool) is in the process's CPU time but
    in no sample. Where the samples miss more than a tenth of it, the rest is
    a bucket of its own, and every share is of the process's CPU time."""
    sampled = sum(b["ms_per_request"] for b in buckets)
    if process_ms - sampled <= 0.1 * process_ms:
        return buckets
    buckets = buckets + [{"what": UNSAMPLED, "samples": 0, "ms_per_request": round(process_ms - sampled, 1)}]
    for b in buckets:
        b["share"] = round(b["ms_per_request"] / process_ms, 4)
    return sorted(buckets, key=lambda b: -b["ms_per_request"])


def _top(stacks: collections.Counter, count: int = 8) -> list[tuple[str, int]]:
    leaves: collections.Counter = collections.Counter()
    for stack, n in stacks.items():
        leaves[stack.split(";")[-1].strip()] += n
    return leaves.most_common(count)


def profile_worker(lab: Lab, name: str, env: dict, endpoint: str, seconds: float, concurrency: int) -> dict:
    worker = lab.worker(f"profile-{name}", env)
    files = audio_set(MIXED)
    http_run(worker.url, files, concurrency, 1, endpoint=endpoint)  # warm-up
    config = LoadConfig(url=worker.url, endpoint=endpoint, files=files, concurrency=concurrency,
                        duration=2 * seconds + 8, timeout=600)
    load = threading.Thread(target=run_load, args=(config,), daemon=True)
    load.start()
    time.sleep(2)
    pid = worker.app_pid()
    passes = {}
    for kind in ("cpu", "idle"):
        before, cpu_before = _requests_done(worker.url), _cpu_seconds(pid)
        stacks = _record(pid, seconds, lab.work / f"profile-{name}-{kind}.raw", idle=kind == "idle")
        passes[kind] = (stacks, _requests_done(worker.url) - before, _cpu_seconds(pid) - cpu_before)
    load.join(3 * seconds + 120)
    lab.release(worker)
    cpu, done, cpu_s = passes["cpu"]
    idle, idle_done, _ = passes["idle"]
    handler = "ThreadWorker.handle_request"
    return {"engine": name, "endpoint": endpoint, "threads": env.get("ASR_CPU_THREADS"), "seconds": seconds,
            "concurrency": concurrency, "requests": done,
            "cpu": _with_unsampled(_bucket(cpu, CPU_BUCKETS, done), cpu_s * 1000 / max(done, 1)),
            "process_cpu_ms_per_request": round(cpu_s * 1000 / max(done, 1), 1), "top_cpu": _top(cpu),
            "handler_wall": _bucket(idle, WAIT_BUCKETS, idle_done, only=handler),
            "idle_requests": idle_done}


def profile(lab: Lab, opts) -> dict:
    if not shutil.which("py-spy", path=str(REPO / ".venv" / "bin")):
        return {"name": "profile", "skipped": "py-spy is not installed in .venv (pip install py-spy)"}
    seconds = 6 if opts.quick else 12
    workers = {"pocketsphinx": ({"ASR_ENGINE": "pocketsphinx"}, "/asr")}
    if not opts.quick:
        workers["funasr-tiny"] = ({"ASR_ENGINE": "funasr",
                                   "ASR_MODEL": str(ensure_model(TINY_MODEL, full_size=False))}, "/asr")
        # The two models the peers section compares, as an instance runs there:
        # one thread, the OpenAI endpoint with its JSON answer (no word times).
        one_core = {"ASR_CPU_THREADS": "1"}
        workers["funasr-full"] = ({"ASR_ENGINE": "funasr", "ASR_MODEL": str(ensure_model(FULL_MODEL, full_size=True)),
                                   **one_core}, OPENAI)
        workers["whisper-base"] = ({"ASR_ENGINE": "whisper", "ASR_MODEL": "base", **one_core}, OPENAI)
    out = {"name": "profile", "workers": [profile_worker(lab, n, env, endpoint, seconds, opts.concurrency)
                                          for n, (env, endpoint) in workers.items()]}
    out["steps"] = step_costs(audio_set(MIXED))
    return out
