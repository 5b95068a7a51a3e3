"""OpenAI's audio endpoints: /v1/audio/transcriptions and /translations.
The form is checked first (openai_params.py), then the upload is read and
decoded, and the answer rendered in the asked format or streamed."""

from __future__ import annotations

import flask

from app import formats
from app.routers import openai_params, openai_stream
from app.routers.common import decode, run, upload
from app.service import Transcription

bp = flask.Blueprint("openai", __name__)

TRANSCRIBE_ENDPOINTS = frozenset({"openai.transcriptions", "openai.translations"})


@bp.post("/v1/audio/transcriptions")
def transcriptions():
    return _answer(openai_params.parse(flask.request.form, task="transcribe"))


@bp.post("/v1/audio/translations")
def translations():
    # Whisper's translate task: any language in, English text out.
    return _answer(openai_params.parse(flask.request.form, task="translate"))


def _answer(request: openai_params.OpenAIRequest):
    if request.stream:
        return openai_stream.response(decode(upload(), use_vad=True), request.options)
    result = run(request.options, use_vad=True)
    return render(result, request)


def render(result: Transcription, request: openai_params.OpenAIRequest):
    return render_as(result, request.response_format, model=request.model, task=request.options.task,
                     granularities=request.granularities)


def render_as(result: Transcription, response_format: str, *, model: str, task: str = "transcribe",
              granularities: frozenset[str] = frozenset({"segment"})):
    """The answer for a finished transcription in an OpenAI response_format
    (also a job's result, app/routers/jobs.py), with X-ASR-Failed-Segments."""
    segments = result.segments
    if response_format in ("json", "verbose_json"):
        if response_format == "json":
            body = formats.to_json(segments, duration=result.duration, model=model)
        else:
            # For a translation too, `language` is the language that was spoken.
            body = formats.to_verbose_json(segments, language=result.language, duration=result.duration,
                                           model=model, task=task, granularities=granularities)
        if result.failed_segments:
            body["failed_segments"] = result.failed_segments
        response = flask.make_response(body)
    else:
        render_text = {"text": formats.to_text, "srt": formats.to_srt, "vtt": formats.to_vtt}[response_format]
        mimetype = "text/vtt" if response_format == "vtt" else "text/plain"
        response = flask.Response(render_text(segments), mimetype=mimetype)
    # OpenAI's shapes have nowhere to say that part of the audio is missing
    # (segments that failed after their retries): the header says it in
    # every format, and the JSON bodies also carry `failed_segments` then.
    response.headers["X-ASR-Failed-Segments"] = str(result.failed_segments)
    return response
