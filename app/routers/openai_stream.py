"""stream=true: OpenAI's server-sent events. One `transcript.text.delta`
per window of speech as the model finishes it, in order, then
`transcript.text.done` with the whole text and `usage`. Each delta also
carries its `segments` with their times (our extension).

The deltas joined are exactly the text of the non-streamed answer. While a
window is still being recognised a comment line goes out every
ASR_STREAM_KEEPALIVE_S (1 s):
Nginx's read timeout never fires on a long stream, and a client that has
gone shows as a failed write, which closes the generator and cancels the
request's queued windows (Transcriber.stream)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

import flask
import numpy as np

from app import formats
from app.audio import SAMPLE_RATE
from app.engines import DecodeOptions
from app.errors import ASRError
from app.routers.common import transcriber

log = logging.getLogger(__name__)

KEEP_ALIVE = ": keep-alive\n\n"


def response(samples: np.ndarray, options: DecodeOptions) -> flask.Response:
    duration = len(samples) / SAMPLE_RATE
    worker = transcriber()
    windows = worker.stream(samples, options, timeout=_deadline(duration),
                            poll_s=worker.settings.stream_keepalive_seconds)
    # The request's admission slot (app/admission.py) is released when the
    # view returns; a stream works on after that, so it keeps the slot and
    # gives it back when its response is closed.
    admission = flask.current_app.extensions["admission"]
    body = _HeldStream(_events(windows, duration), admission.leave if flask.g.pop("admitted", False) else None)
    # X-Accel-Buffering: Nginx passes each event on at once instead of
    # buffering the answer; no-cache keeps any other proxy from holding it.
    return flask.Response(body, mimetype="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _deadline(duration: float) -> float | None:
    # The same deadline the non-streamed request would get (app/jobs/pace.py).
    planner = flask.current_app.extensions.get("fanout")
    return planner.pace.plan(duration, fanned=False).deadline_s if planner is not None else None


def _events(windows: Iterator, duration: float) -> Iterator[str]:
    parts: list[str] = []
    with contextlib.closing(windows):
        try:
            for segments in windows:
                if segments is None:
                    yield KEEP_ALIVE
                    continue
                text = formats.to_text(segments)
                if not text:
                    continue
                delta = f" {text}" if parts else text
                parts.append(delta)
                # `segments` is ours, not OpenAI's: the delta's times, for
                # clients (the page at /) that show them as they come.
                # OpenAI's client keeps unknown fields and reads on.
                yield _event({"type": "transcript.text.delta", "delta": delta, "logprobs": None,
                              "segments": [s.as_dict() for s in segments if s.text]})
        except ASRError as error:
            # Headers are gone: the error travels as an event, which the
            # openai client raises as APIError.
            log.warning("stream failed after its headers: %s", error.message)
            yield _event({"error": {"message": error.message, "type": error.openai_type,
                                    "param": error.param, "code": "stream_failed"}})
            return
    yield _event({"type": "transcript.text.done", "text": "".join(parts), "logprobs": None,
                  "usage": formats.usage(duration)})


class _HeldStream:
    """The events; closing it (the last event was sent, or the client is
    gone: the server closes every response) stops the work and runs `release`."""

    def __init__(self, events: Iterator[str], release):
        self._events = events
        self._release = release

    def __iter__(self) -> Iterator[str]:
        return self._events

    def close(self) -> None:
        try:
            self._events.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
