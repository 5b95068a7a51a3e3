"""HTTP endpoints by surface, one blueprint per module, registered in
`create_app` (`register` for the transcription surfaces, app/jobs/setup.py
for jobs).

| module | endpoints |
|---|---|
| `original.py` | `/asr`, `/asr_simple`: the original system's contract |
| `openai.py` | `/v1/audio/transcriptions`, `/v1/audio/translations` (form: `openai_params.py`, `stream=true`: `openai_stream.py`) |
| `openai_models.py` | `/v1/models`, `/v1/models/{id}`, and the `model` field's check |
| `operations.py` | `/health`, `/stats`, `/metrics` |
| `docs.py` | `/` (the page for people, app/static/), `/openapi.json` |
| `jobs.py` | `/v1/jobs`: submit a long recording, follow its progress, fetch or cancel it |
| `common.py` | shared by the above: upload, decode, one run through the model |
"""

from __future__ import annotations

import flask


def register(app: flask.Flask) -> frozenset[str]:
    """Registers the transcription and operations surfaces; returns the
    endpoints that transcribe (counted in metrics, admitted one slot each)."""
    from app.routers import docs, openai, openai_models, operations, original

    for blueprint in (original.bp, openai.bp, openai_models.bp, operations.bp, docs.bp):
        app.register_blueprint(blueprint)
    return original.TRANSCRIBE_ENDPOINTS | openai.TRANSCRIBE_ENDPOINTS
