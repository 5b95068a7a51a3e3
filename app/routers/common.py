"""What every transcription endpoint shares: the worker's Transcriber, the
uploaded file within its limit, decoding, and one run through the model."""

from __future__ import annotations

import flask
import numpy as np

from app import audio
from app.engines import DecodeOptions
from app.errors import BadRequest, TooLarge
from app.service import Transcriber, Transcription


def transcriber() -> Transcriber:
    return flask.current_app.extensions["asr"]


def upload() -> bytes:
    """The `file` field's bytes, within the upload limit."""
    uploaded = flask.request.files.get("file")
    if uploaded is None:
        fields = ", ".join(sorted(flask.request.files)) or "none"
        raise BadRequest(f"missing multipart file field 'file' (got: {fields})", param="file")
    data = uploaded.read()
    limit = transcriber().settings.max_upload_bytes
    if len(data) > limit:
        raise TooLarge(f"upload too large: {len(data)} bytes, the limit is {limit} bytes")
    return data


def decode(data: bytes, *, use_vad: bool) -> np.ndarray:
    """16 kHz mono samples, within the duration limit of the endpoint kind."""
    settings = transcriber().settings
    limit = settings.max_audio_seconds if use_vad else settings.max_simple_seconds
    try:
        return audio.decode(data, max_seconds=limit, ffmpeg_timeout=settings.ffmpeg_timeout_seconds)
    except TooLarge as error:
        if use_vad and "jobs" in flask.current_app.extensions:
            raise TooLarge(f"{error.message}; for longer recordings submit a job: POST /v1/jobs") from None
        raise


def run(options: DecodeOptions, *, use_vad: bool) -> Transcription:
    """Reads, decodes and transcribes the upload. The caller checks the
    language first, so a request the model cannot do costs no decoding."""
    data = upload()
    samples = decode(data, use_vad=use_vad)
    planner = flask.current_app.extensions.get("fanout")
    if use_vad and planner is not None:
        # app/jobs/fanout.py: the deadline follows the audio's length, and a
        # long recording is spread over every worker of the host.
        return planner.transcribe(samples, options, upload=data, request_id=flask.g.request_id)
    return transcriber().transcribe(samples, options, use_vad=use_vad)
