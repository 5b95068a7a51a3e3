"""Admission: at most `limit` transcription requests inside a worker at once.

A transcription holds a Gunicorn handler thread for its whole length
(decoding, VAD, waiting for the model), and Gunicorn hands connections to its
threads first come, first served: with every thread held, a /health call
queues behind transcriptions and the poller reads "busy" as "dead". So the
worker admits at most `limit` transcriptions and Gunicorn runs `limit` plus a
reserve of threads (deploy/gunicorn.conf.py): /health, /stats and /metrics
always find a free thread.

Past the limit a request is refused at once, before its body is read: 503
with Retry-After. Behind the fleet Nginx holds each worker to the same number
(`max_conns`), so only a client that reaches a worker directly meets this
refusal; for Nginx it is a 503 like a full queue, tried on another instance.
"""

from __future__ import annotations

import threading

import flask

from app.errors import Overloaded


class Admission:
    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self.admitted = 0

    def try_enter(self) -> bool:
        with self._lock:
            if self.admitted >= self.limit:
                return False
            self.admitted += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1


def install(app: flask.Flask, admission: Admission, endpoints: frozenset[str]) -> None:
    """Admits `endpoints` through `admission`; every other endpoint passes."""

    @app.before_request
    def admit() -> None:
        if flask.request.endpoint not in endpoints:
            return
        if not admission.try_enter():
            raise Overloaded(f"worker at capacity ({admission.limit} requests in progress); retry shortly")
        flask.g.admitted = True

    @app.teardown_request
    def release(_error) -> None:
        # Teardown runs for every request, whatever happened in between.
        if flask.g.pop("admitted", False):
            admission.leave()
