"""The ASR worker: a Flask app serving one speech model.

Gunicorn loads `app:create_app()` in each worker process; tests call
`create_app(Settings(...))` once per case. Importing this package loads no
model: that happens in `Transcriber.start`, inside the worker.
"""

from __future__ import annotations

import io
import logging
import time
import uuid

import flask

from app import admission, auth, errors, routers
from app.jobs import setup as jobs_setup
from app.metrics import Metrics
from app.service import Transcriber
from app.settings import Settings

__all__ = ["create_app", "Settings"]

# Room for the multipart framing and the small form fields around the file.
FORM_OVERHEAD_BYTES = 64 * 1024


class InMemoryRequest(flask.Request):
    """Keeps uploads in memory: no temp file can be left behind by a request."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        return io.BytesIO()


def create_app(settings: Settings | None = None, *, start: bool = True) -> flask.Flask:
    """Builds a worker app and starts loading its model in the background.

    With no settings they come from the ASR_* environment: that is the
    Gunicorn path, where a model that cannot load ends the worker process so
    Supervisor reports the failure. With explicit settings (tests), a failed
    load shows as "broken" in /health instead.
    """
    from_environment = settings is None
    settings = Settings.from_env() if from_environment else settings
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s [%(name)s] %(message)s")

    app = flask.Flask(__name__)
    app.request_class = InMemoryRequest
    app.config["ASR_MAX_UPLOAD_BYTES"] = settings.max_upload_bytes
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    app.json.sort_keys = False

    metrics = Metrics()
    transcriber = Transcriber(settings, metrics)
    app.extensions["asr"] = transcriber
    transcribing = routers.register(app)
    # /v1/jobs, the planner of long requests and the segment puller (app/jobs/).
    admitted = transcribing | jobs_setup.install(app, transcriber, start=start)
    errors.register(app)
    # Request hooks first: a 401 still gets its request ID and is counted.
    _install_request_hooks(app, settings, metrics, transcribing)
    if settings.api_key_file:
        auth.install(app, auth.load_keys(settings.api_key_file))
    # After the key check: a refused key never takes a slot.
    app.extensions["admission"] = admission.Admission(settings.max_concurrent_requests)
    admission.install(app, app.extensions["admission"], admitted)

    if start:
        transcriber.start(exit_on_failure=from_environment)
    return app


def _install_request_hooks(app: flask.Flask, settings: Settings, metrics: Metrics,
                           transcribing: frozenset[str]) -> None:
    @app.before_request
    def begin() -> None:
        flask.g.request_id = flask.request.headers.get("X-Request-ID") or uuid.uuid4().hex
        flask.g.started = time.monotonic()
        flask.g.counted = flask.request.endpoint in transcribing
        if flask.g.counted:
            metrics.request_started()

    @app.after_request
    def tag(response: flask.Response) -> flask.Response:
        response.headers["X-ASR-Worker"] = settings.instance_name
        response.headers["X-Request-ID"] = flask.g.get("request_id", "")
        transcriber = app.extensions["asr"]
        if transcriber.engine is not None:
            response.headers["X-ASR-Model"] = transcriber.engine.model
        if flask.g.get("counted"):
            flask.g.counted = False
            seconds = time.monotonic() - flask.g.started
            metrics.request_finished(flask.request.endpoint, response.status_code, seconds)
            app.logger.info("%s %s %d %.3fs id=%s%s", flask.request.method, flask.request.path,
                            response.status_code, seconds, flask.g.request_id,
                            f" reason={flask.g.error_reason!r}" if "error_reason" in flask.g else "")
        return response
