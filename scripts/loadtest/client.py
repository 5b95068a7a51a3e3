"""One load-test request: a POST of one recording, and its outcome as a Sample.

Every outcome, even a refused connection, becomes a Sample, so a run never
loses a request from its counts.
"""

from __future__ import annotations

import dataclasses
import time

import requests

from .config import NO_HEADER, OPENAI_ENDPOINT, AudioFile, LoadConfig


@dataclasses.dataclass
class Sample:
    """One request: when it started (s after the run began), how long it took, what came back."""

    index: int
    user: int
    file: str
    start: float
    latency: float
    status: int | None
    error: str | None  # None, "connection", "timeout", "http_<status>", "bad_response", "other"
    worker: str | None
    audio_seconds: float | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None



def request_id(run_id: str, index: int) -> str:
    """The X-Request-ID a request carries, so a worker's log line leads back to its CSV row."""
    return f"loadtest-{run_id}-{index}" if index >= 0 else f"loadtest-{run_id}-warmup{-1 - index}"


def _form(config: LoadConfig) -> dict:
    if config.endpoint == OPENAI_ENDPOINT:
        form = {"model": config.model}
        if config.lang:
            form["language"] = config.lang
        return form
    return {"lang": config.lang} if config.lang else {}


def send(session: requests.Session, config: LoadConfig, url: str, audio: AudioFile, *,
         index: int, user: int, t0: float, learned: dict | None = None, run_id: str = "") -> Sample:
    """One POST; every outcome, even a refused connection, becomes a Sample."""
    status = worker = None
    error = None
    detail = ""
    seconds = audio.seconds
    start = time.monotonic()
    try:
        response = session.post(
            url, files={"file": (audio.name, audio.data, "application/octet-stream")},
            data=_form(config), timeout=config.timeout, allow_redirects=False,
            headers={"X-Request-ID": request_id(run_id, index)})
        latency = time.monotonic() - start
        status = response.status_code
        worker = response.headers.get("X-ASR-Worker") or NO_HEADER
        try:
            body = response.json()
        except ValueError:
            body = None
        if not 200 <= status < 300:
            error = f"http_{status}"
            detail = response.text.strip()[:200]
        elif not isinstance(body, dict) or ("code" in body and body["code"] != 0) or \
                ("text" not in body and "data" not in body):
            error = "bad_response"
            detail = response.text.strip()[:200]
        elif seconds is None and isinstance(body.get("duration"), (int, float)):
            seconds = float(body["duration"])
            if learned is not None:
                learned[audio.name] = seconds
        if seconds is None and learned:
            seconds = learned.get(audio.name)
    except requests.Timeout as exc:  # before ConnectionError: ConnectTimeout is both
        latency, error, detail = time.monotonic() - start, "timeout", str(exc)[:200]
    except requests.ConnectionError as exc:
        latency, error, detail = time.monotonic() - start, "connection", str(exc)[:200]
    except Exception as exc:  # noqa: BLE001 (a load test must never lose a request from its counts)
        latency, error, detail = time.monotonic() - start, "other", f"{type(exc).__name__}: {exc}"[:200]
    return Sample(index=index, user=user, file=audio.name, start=round(start - t0, 4), latency=latency,
                  status=status, error=error, worker=worker, audio_seconds=seconds, detail=detail)
