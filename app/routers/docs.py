"""For people and client generators: the page at `/` (app/static/: plain
HTML and JavaScript, no build step and no CDN, so it works offline) and
`/openapi.json` (app/openapi.py holds the document)."""

from __future__ import annotations

import flask

from app import openapi

bp = flask.Blueprint("docs", __name__)


@bp.get("/")
def page():
    # no-cache: after an upgrade the browser asks again instead of showing
    # yesterday's page against today's API.
    response = flask.current_app.send_static_file("index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/openapi.json")
def openapi_json():
    return openapi.document()
