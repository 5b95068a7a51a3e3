#!/usr/bin/env python3
"""Transcribe recordings through the fleet: one progress bar per file.

    scripts/transcribe.py FILE... [--url URL] [--format srt] [--out DIR]

Files shorter than --sync-below seconds go to /v1/audio/transcriptions and
wait on the connection; longer ones are submitted as jobs (/v1/jobs), whose
progress drives the bars. Each transcript is written beside its recording
(talk.mp3 -> talk.srt) or into --out. Ctrl-C cancels the jobs this run
started (DELETE /v1/jobs/{id}) before it exits. Exit status: 0 when every
file was transcribed, 1 when any failed, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import requests
import soundfile
from tqdm import tqdm

EXTENSIONS = {"json": "json", "verbose_json": "json", "text": "txt", "srt": "srt", "vtt": "vtt"}
POLL_S = 1.0


class Client:
    def __init__(self, url: str, api_key: str | None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def call(self, method: str, path: str, *, patience_s: float = 300, **kwargs) -> requests.Response:
        """One request, retried after Retry-After while the fleet is busy (503)."""
        deadline = time.monotonic() + patience_s
        while True:
            response = self.session.request(method, self.url + path, timeout=kwargs.pop("timeout", 3600), **kwargs)
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            time.sleep(float(response.headers.get("Retry-After", 1)))


def reason(response: requests.Response) -> str:
    try:
        body = response.json()
        return body.get("error", {}).get("message") or body.get("msg") or response.text
    except ValueError:
        return response.text.strip()[:300]


def duration(path: Path) -> float | None:
    try:
        return soundfile.info(str(path)).duration
    except (RuntimeError, soundfile.LibsndfileError):
        return None  # a format libsndfile cannot read: the fleet decides, as a job


def output_path(path: Path, out: Path | None, response_format: str) -> Path:
    return (out or path.parent) / f"{path.stem}.{EXTENSIONS[response_format]}"


def run_sync(client: Client, path: Path, form: dict, bar: tqdm) -> str:
    with path.open("rb") as handle:
        response = client.call("POST", "/v1/audio/transcriptions", files={"file": (path.name, handle)}, data=form)
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {reason(response)}")
    bar.update(bar.total - bar.n)
    return response.text


@contextlib.contextmanager
def interrupt_after():
    """Holds Ctrl-C until the block ends: a job the fleet has accepted is
    always known here (and so cancelled), never lost between its 202 and us."""
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pressed:
            raise KeyboardInterrupt


def submit(client: Client, path: Path, form: dict, jobs: dict, bar: tqdm) -> None:
    with interrupt_after(), path.open("rb") as handle:
        response = client.call("POST", "/v1/jobs", files={"file": (path.name, handle)}, data=form)
        if response.status_code == 202:
            jobs[response.json()["id"]] = (path, bar)
    if response.status_code != 202:
        raise RuntimeError(f"{response.status_code}: {reason(response)}")


def follow(client: Client, jobs: dict[str, tuple[Path, tqdm]], fmt: str, out: Path | None) -> list[str]:
    """Polls every job until it ends, updating its bar; writes each result."""
    failures = []
    while jobs:
        for job_id, (path, bar) in list(jobs.items()):
            response = client.call("GET", f"/v1/jobs/{job_id}", timeout=30)
            if response.status_code != 200:
                failures.append(f"{path}: {reason(response)}")
                del jobs[job_id]
                continue
            body = response.json()
            progress = body["progress"]
            bar.total = progress["audio_seconds_total"] or bar.total
            bar.n = min(progress["audio_seconds_done"], bar.total or 0)
            bar.set_postfix_str(f"{body['status']}, {progress['segments_done']}/{progress['segments_total'] or '?'}"
                                f" segments, eta {progress['eta_s']:.0f} s" if progress["eta_s"] is not None
                                else body["status"])
            if body["status"] == "succeeded":
                result = client.call("GET", f"/v1/jobs/{job_id}/result", params={"response_format": fmt}, timeout=60)
                output_path(path, out, fmt).write_text(result.text)
                bar.n = bar.total
                bar.refresh()
                del jobs[job_id]
            elif body["status"] in ("failed", "cancelled"):
                failures.append(f"{path}: job {body['status']}: {body['error']}")
                del jobs[job_id]
        time.sleep(POLL_S if jobs else 0)
    return failures


def cancel(client: Client, job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            client.call("DELETE", f"/v1/jobs/{job_id}", patience_s=10, timeout=10)
            print(f"cancelled job {job_id}", file=sys.stderr)
        except requests.RequestException as error:
            print(f"could not cancel job {job_id}: {error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--url", default=os.environ.get("ASR_URL", "http://127.0.0.1:5002"))
    parser.add_argument("--format", default="srt", choices=sorted(EXTENSIONS))
    parser.add_argument("--out", type=Path, help="folder for the results (default: beside each file)")
    parser.add_argument("--language", default="auto")
    parser.add_argument("--sync-below", type=float, default=60.0,
                        help="files shorter than this many seconds are transcribed synchronously")
    parser.add_argument("--api-key", default=os.environ.get("ASR_API_KEY"))
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    client = Client(args.url, args.api_key)
    form = {"response_format": args.format, "language": args.language}
    jobs: dict[str, tuple[Path, tqdm]] = {}
    failures: list[str] = []
    try:
        for position, path in enumerate(args.files):
            seconds = duration(path)
            bar = tqdm(total=round(seconds or 0, 1), desc=path.name, unit="s", position=position,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio {postfix}")
            try:
                if seconds is not None and seconds < args.sync_below:
                    output_path(path, args.out, args.format).write_text(run_sync(client, path, form, bar))
                else:
                    submit(client, path, form, jobs, bar)
            except (RuntimeError, requests.RequestException) as error:
                failures.append(f"{path}: {error}")
        failures += follow(client, jobs, args.format, args.out)  # finished ones leave `jobs`
    except KeyboardInterrupt:
        cancel(client, list(jobs))
        return 130
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
