"""/v1/models: what this worker (and so its fleet: every instance serves the
same model) answers to, in OpenAI's shape, and the `model` field's check."""

from __future__ import annotations

import time

import flask

from app.errors import ModelNotFound, Overloaded
from app.routers.common import transcriber

bp = flask.Blueprint("models", __name__)

# Names a client written for OpenAI sends unchanged; they mean the served model.
ALIASES = ("whisper-1",)
OWNER = "asr-fleet"
# OpenAI's `created`: when this worker started serving the model.
CREATED = int(time.time())


def served_model() -> str:
    worker = transcriber()
    if worker.engine is None:
        raise Overloaded(f"model not ready ({worker.state})", retry_after=5)
    return worker.engine.model


def check_model(requested: str | None) -> str:
    """The served model for `requested` (absent means the served one), or
    404 model_not_found: a typo must not transcribe with whatever is served."""
    served = served_model()
    name = (requested or "").strip()
    if name and name != served and name not in ALIASES:
        raise ModelNotFound(f"model {name!r} does not exist here; this fleet serves {served!r} "
                            f"(also answering to {', '.join(ALIASES)}): see GET /v1/models", param="model")
    return served


def _card(model_id: str) -> dict:
    worker = transcriber()
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": OWNER,
            "root": served_model(), "engine": worker.engine.name}


@bp.get("/v1/models")
def list_models():
    return {"object": "list", "data": [_card(served_model()), *(_card(alias) for alias in ALIASES)]}


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str):
    check_model(model_id)
    return _card(model_id)
