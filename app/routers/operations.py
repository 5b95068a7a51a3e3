"""Operations: /health for the poller and Nginx, /stats and /metrics for people and Prometheus.
None of them is admitted as a transcription, so they always find a thread."""

from __future__ import annotations

import time

import flask

from app.routers.common import transcriber as _transcriber

bp = flask.Blueprint("operations", __name__)
# /health's progress fields before the model has loaded.
NO_PROGRESS = {"batches_done": 0, "last_batch_age_s": None, "batch_running_s": 0.0, "batch_audio_s": 0.0,
               "longest_batch_s": 0.0, "model_s_per_audio_s": None}


@bp.get("/health")
def health():
    """Takes no lock a transcription holds, and runs on a thread no
    transcription can take (app/admission.py), so it answers at once however
    busy the worker is. Busy is not failed: a worker with work in hand says
    so (`busy`) with its progress (engine calls done, the age of the last,
    how long the running one has taken), from which the poller tells a busy
    worker from a stuck one."""
    transcriber = _transcriber()
    engine, batcher = transcriber.engine, transcriber.batcher
    admission = flask.current_app.extensions["admission"]
    depth, in_flight = (batcher.depth if batcher else 0), transcriber.metrics.in_flight
    body = {
        "status": "ok" if transcriber.healthy else ("broken" if transcriber.state != "loading" else "loading"),
        "reason": transcriber.reason or None,
        "model": engine.model if engine else transcriber.settings.model,
        "engine": engine.name if engine else transcriber.settings.engine,
        "device": engine.device if engine else None,
        "instance": transcriber.settings.instance_name,
        "busy": bool(depth or in_flight),
        "queue_depth": depth,
        "in_flight": in_flight,
        "admitted": admission.admitted,
        "max_concurrent": admission.limit,
        **(batcher.progress() if batcher else NO_PROGRESS),
        "requests_total": transcriber.metrics.total,
        "uptime_s": round(time.monotonic() - transcriber.metrics.started, 1),
    }
    return body, 200 if transcriber.healthy else 503


@bp.get("/stats")
def stats():
    return _transcriber().metrics.stats()


@bp.get("/metrics")
def metrics():
    transcriber = _transcriber()
    depth = transcriber.batcher.depth if transcriber.batcher else 0
    return flask.Response(transcriber.metrics.prometheus(depth),
                          mimetype="text/plain; version=0.0.4")
