"""/openapi.json: the API described for people and client generators
(app/openapi.py holds the document)."""

from __future__ import annotations

import flask

from app import openapi

bp = flask.Blueprint("docs", __name__)


@bp.get("/openapi.json")
def openapi_json():
    return openapi.document()
