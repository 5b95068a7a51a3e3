"""Wires long recordings into a worker app: the planner every synchronous
request goes through, and, when ASR_JOB_DB names a store, the puller and
the /v1/jobs endpoints' state."""

from __future__ import annotations

import types

import flask

from app.jobs.fanout import FanOut
from app.jobs.pace import Pace
from app.jobs.puller import Puller
from app.jobs.sqlite_store import SQLiteStore
from app.routers import jobs as jobs_router
from app.service import Transcriber


def install(app: flask.Flask, transcriber: Transcriber, *, start: bool) -> frozenset[str]:
    """Registers /v1/jobs and sets app.extensions["fanout"] (always) and
    ["jobs"] (with a store); returns the endpoints admission must count."""
    settings = transcriber.settings
    app.register_blueprint(jobs_router.bp)
    if not settings.job_db:
        app.extensions["fanout"] = FanOut(transcriber, Pace(settings, transcriber.metrics))
        return jobs_router.ADMITTED_ENDPOINTS
    store = SQLiteStore(settings.job_db)
    pace = Pace(settings, transcriber.metrics, store)
    puller = Puller(transcriber, store, pace)
    pace.queue_rtf = puller.rtf
    app.extensions["jobs"] = types.SimpleNamespace(store=store, pace=pace, puller=puller)
    app.extensions["fanout"] = FanOut(transcriber, pace, store, puller)
    if start:
        puller.start()
    return jobs_router.ADMITTED_ENDPOINTS
