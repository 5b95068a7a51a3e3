"""Optional API keys: `Authorization: Bearer <key>` checked before any work.

Keys live in a file, one per line (blank lines and `#` comments ignored),
named by ASR_API_KEY_FILE. The check runs in the worker rather than in Nginx
so that a worker is protected even when reached directly, and so the 401
carries the same JSON shape as every other error. Operations endpoints
(/health, /stats, /metrics) stay open: the poller and Prometheus need them,
and the workers listen on loopback only. So does the page at / with its
script: it holds no data, and asks the person for the key it then sends.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import flask

from app.errors import ConfigError, Unauthorized

OPEN_PATHS = frozenset({"/health", "/stats", "/metrics", "/"})
OPEN_PREFIX = "/static/"


def load_keys(path: str) -> tuple[str, ...]:
    """Reads the key file; a missing or empty one is a startup error."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read ASR_API_KEY_FILE {path}: {error.strerror}") from None
    keys = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not keys:
        raise ConfigError(f"ASR_API_KEY_FILE {path} holds no keys")
    return keys


def install(app: flask.Flask, keys: tuple[str, ...]) -> None:
    """Refuses requests without a valid key, before the body is read."""

    @app.before_request
    def require_key() -> None:
        if flask.request.path in OPEN_PATHS or flask.request.path.startswith(OPEN_PREFIX):
            return
        header = flask.request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        # Compare against every key so the time taken does not say which matched.
        matches = [hmac.compare_digest(presented.strip().encode(), key.encode()) for key in keys]
        if not any(matches):
            raise Unauthorized("invalid API key")
