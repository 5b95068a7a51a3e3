"""HTTP endpoints: the original system's /asr pair, OpenAI's, and operations."""

from __future__ import annotations

import time

import flask

from app import audio, formats
from app.engines import DecodeOptions
from app.errors import BadRequest, TooLarge
from app.service import Transcriber, Transcription

bp = flask.Blueprint("asr", __name__)

TRANSCRIBE_ENDPOINTS = frozenset({"asr.asr", "asr.asr_simple", "asr.openai_transcriptions"})


def _transcriber() -> Transcriber:
    return flask.current_app.extensions["asr"]


def _upload() -> bytes:
    """The `file` field's bytes, within the upload limit."""
    upload = flask.request.files.get("file")
    if upload is None:
        fields = ", ".join(sorted(flask.request.files)) or "none"
        raise BadRequest(f"missing multipart file field 'file' (got: {fields})", param="file")
    data = upload.read()
    limit = _transcriber().settings.max_upload_bytes
    if len(data) > limit:
        raise TooLarge(f"upload too large: {len(data)} bytes, the limit is {limit} bytes")
    return data


def _decode(data: bytes, max_seconds: float):
    settings = _transcriber().settings
    return audio.decode(data, max_seconds=max_seconds, ffmpeg_timeout=settings.ffmpeg_timeout_seconds)


def _run(*, use_vad: bool, language: str | None) -> Transcription:
    transcriber = _transcriber()
    # Language first: a request the model cannot do costs no decoding.
    code = transcriber.check_language(language)
    settings = transcriber.settings
    data = _upload()
    limit = settings.max_audio_seconds if use_vad else settings.max_simple_seconds
    try:
        samples = _decode(data, limit)
    except TooLarge as error:
        if use_vad and "jobs" in flask.current_app.extensions:
            raise TooLarge(f"{error.message}; for longer recordings submit a job: POST /v1/jobs") from None
        raise
    planner = flask.current_app.extensions.get("fanout")
    if use_vad and planner is not None:
        # app/jobs/fanout.py: the deadline follows the audio's length, and a
        # long recording is spread over every worker of the host.
        return planner.transcribe(samples, DecodeOptions(language=code), upload=data,
                                  request_id=flask.g.request_id)
    return transcriber.transcribe(samples, DecodeOptions(language=code), use_vad=use_vad)


def _original_body(result: Transcription, data: str) -> dict:
    engine = _transcriber().engine
    total = result.total_segments
    return {
        "code": 0,
        "msg": "ok",
        "data": data,
        "stats": {
            "total_segments": total,
            "successful_segments": len(result.segments),
            "failed_segments": result.failed_segments,
            "success_rate": round(len(result.segments) / total, 4) if total else 1.0,
        },
        "segments": [segment.as_dict() for segment in result.segments],
        "text": formats.to_text(result.segments),
        "language": result.language,
        "duration": round(result.duration, 3),
        "model": engine.model,
        "engine": engine.name,
        "worker": _transcriber().settings.instance_name,
    }


@bp.post("/asr")
def asr():
    result = _run(use_vad=True, language=flask.request.form.get("lang"))
    return _original_body(result, formats.to_srt(result.segments))


@bp.post("/asr_simple")
def asr_simple():
    result = _run(use_vad=False, language=flask.request.form.get("lang"))
    return _original_body(result, formats.to_text(result.segments))


@bp.post("/v1/audio/transcriptions")
def openai_transcriptions():
    form = flask.request.form
    response_format = form.get("response_format", "json")
    if response_format not in formats.RESPONSE_FORMATS:
        raise BadRequest(
            f"response_format {response_format!r} is not one of "
            f"{', '.join(formats.RESPONSE_FORMATS)}", param="response_format")
    granularities = set(form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities"))
    if granularities - {"segment"}:
        raise BadRequest("timestamp_granularities supports only 'segment' for this model",
                         param="timestamp_granularities")
    # `model` and `prompt` are accepted for compatibility: a worker serves one model.
    result = _run(use_vad=True, language=form.get("language"))
    model = _transcriber().engine.model
    if response_format == "json":
        return {"text": formats.to_text(result.segments), "model": model}
    if response_format == "verbose_json":
        return formats.to_verbose_json(result.segments, language=result.language,
                                       duration=result.duration, model=model)
    render = {"text": formats.to_text, "srt": formats.to_srt, "vtt": formats.to_vtt}[response_format]
    mimetype = "text/vtt" if response_format == "vtt" else "text/plain"
    return flask.Response(render(result.segments), mimetype=mimetype)


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
        **(batcher.progress() if batcher else {"batches_done": 0, "last_batch_age_s": None,
                                               "batch_running_s": 0.0, "longest_batch_s": 0.0}),
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
