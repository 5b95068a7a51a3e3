"""Typed errors and the one handler that turns them into responses.

Code raises an ASRError subclass with a one-line reason; `register` maps it to
its HTTP status and to one of two JSON shapes: the original system's
`{"code", "msg"}`, or OpenAI's `{"error": {...}}` under /v1/.
"""

from __future__ import annotations

import logging
import re

import flask
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

# A reason quotes what the client sent (a `lang`, the field names): a 1 MB
# value must not come back in the body or fill the log line of the request.
MAX_MESSAGE_CHARS = 300


class ConfigError(ValueError):
    """A setting that cannot work; the worker refuses to start."""


class ASRError(Exception):
    """Base of every error a client can cause or should see."""

    status = 500
    openai_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None):
        message = _bounded(message)
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after


class BadRequest(ASRError):
    status = 400
    openai_type = "invalid_request_error"


class BadAudio(BadRequest):
    """The upload is empty, truncated or corrupt."""


class Unauthorized(ASRError):
    """No valid API key."""

    status = 401
    openai_type = "invalid_request_error"


class NotFound(ASRError):
    """No such job (or not this client's)."""

    status = 404
    openai_type = "invalid_request_error"


class ModelNotFound(NotFound):
    """A `model` this fleet does not serve (OpenAI's `model_not_found`)."""


class Conflict(ASRError):
    """The job is not in a state that has what was asked (a result while running)."""

    status = 409
    openai_type = "invalid_request_error"


class Gone(ASRError):
    """The job was cancelled: its audio and result are deleted."""

    status = 410
    openai_type = "invalid_request_error"


class UnsupportedMedia(ASRError):
    """The upload is not audio any decoder knows."""

    status = 415
    openai_type = "invalid_request_error"


class TooLarge(ASRError):
    """Over the upload size or audio duration limit."""

    status = 413
    openai_type = "invalid_request_error"


class Unprocessable(ASRError):
    """Well-formed, but this model cannot do it (e.g. an unsupported language)."""

    status = 422
    openai_type = "invalid_request_error"


class Overloaded(ASRError):
    """The queue is full or the model is not ready: try another worker."""

    status = 503
    openai_type = "server_error"

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message, retry_after=retry_after)


class DeadlineExceeded(Overloaded):
    """The request could not finish within the per-request deadline."""


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    # Both ends: the start says what was wrong, the end what would be accepted.
    return f"{message[:200]} ... {message[-(MAX_MESSAGE_CHARS - 205):]}"


def _snake_case(name: str) -> str:
    # An acronym stays one word: ASRError is asr_error, not a_s_r_error.
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _respond(status: int, message: str, openai_type: str, code: str, *, param=None, retry_after=None):
    if flask.request.path.startswith("/v1/"):
        body = {"error": {"message": message, "type": openai_type, "param": param, "code": code}}
    else:
        body = {"code": status, "msg": message}
    response = flask.jsonify(body)
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def register(app: flask.Flask) -> None:
    """Installs the handlers: typed errors, HTTP errors and the last resort."""

    @app.errorhandler(ASRError)
    def handle_asr_error(error: ASRError):
        flask.g.error_reason = error.message
        return _respond(
            error.status, error.message, error.openai_type, _snake_case(type(error).__name__),
            param=error.param, retry_after=error.retry_after,
        )

    @app.errorhandler(HTTPException)
    def handle_http_error(error: HTTPException):
        # 404, 405, and werkzeug's own 413 for bodies over MAX_CONTENT_LENGTH.
        status = error.code or 500
        message = error.description or error.name
        if status == 413:
            message = f"upload too large: the limit is {app.config['ASR_MAX_UPLOAD_BYTES']} bytes"
        openai_type = "invalid_request_error" if status < 500 else "server_error"
        return _respond(status, message, openai_type, _snake_case(error.name.replace(" ", "")))

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        # The trace goes to the log, never to the client.
        log.exception("unhandled error on %s", flask.request.path)
        return _respond(500, "internal error, see the worker log", "server_error", "internal_error")
