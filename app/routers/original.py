"""The original system's endpoints: /asr (VAD, SRT in `data`) and
/asr_simple (one pass, plain text), answering `{"code", "msg", ...}`."""

from __future__ import annotations

import flask

from app import formats
from app.engines import DecodeOptions
from app.routers.common import run, transcriber
from app.service import Transcription

# Blueprint "asr" keeps the endpoint names (asr.asr) that metrics label requests with.
bp = flask.Blueprint("asr", __name__)

TRANSCRIBE_ENDPOINTS = frozenset({"asr.asr", "asr.asr_simple"})


def _transcribe(*, use_vad: bool) -> Transcription:
    # A language the model lacks is 422 here (the original contract).
    language = transcriber().check_language(flask.request.form.get("lang"))
    return run(DecodeOptions(language=language), use_vad=use_vad)


def _body(result: Transcription, data: str) -> dict:
    worker = transcriber()
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
        "model": worker.engine.model,
        "engine": worker.engine.name,
        "worker": worker.settings.instance_name,
    }


@bp.post("/asr")
def asr():
    result = _transcribe(use_vad=True)
    return _body(result, formats.to_srt(result.segments))


@bp.post("/asr_simple")
def asr_simple():
    result = _transcribe(use_vad=False)
    return _body(result, formats.to_text(result.segments))
