"""The OpenAPI 3.1 document served at /openapi.json, written by hand (no
dependency): every endpoint of the worker, so clients can be generated.
tests/test_openai_api.py checks that it names every route the app has."""

from __future__ import annotations

from app import formats

ERROR = {"$ref": "#/components/schemas/Error"}
OPENAI_ERROR = {"$ref": "#/components/schemas/OpenAIError"}
LANGUAGE = {"type": "string", "description": "ISO 639-1 code, or auto; the served model's list is in a 422/400 reason"}


def _form(properties: dict, required=("file",)) -> dict:
    schema = {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}, **properties},
              "required": list(required)}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def _answers(ok: dict, error: dict, *codes: int) -> dict:
    answers = {"200": ok}
    for code in codes:
        answers[str(code)] = {"description": "see the one-line reason", "content": {"application/json": {"schema": error}}}
    return answers


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _openai_form(*, transcription: bool) -> dict:
    properties = {
        "model": {"type": "string", "description": "the served model's id or whisper-1; others: 404 model_not_found"},
        "prompt": {"type": "string", "description": "Whisper's initial prompt"},
        "response_format": {"type": "string", "enum": list(formats.RESPONSE_FORMATS), "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
        "stream": {"type": "boolean", "default": False,
                   "description": "text/event-stream of transcript.text.delta (with its `segments`' times, "
                                  "our extension), then transcript.text.done (json/text only)"},
    }
    if transcription:
        properties.update({
            "language": LANGUAGE,
            "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["segment", "word"]},
                                          "description": "word: top-level words in verbose_json (Whisper, SenseVoice)"},
            "chunking_strategy": {"type": "string", "description": "auto or {\"type\": \"server_vad\"}"},
            "include[]": {"type": "array", "items": {"type": "string"}, "description": "not supported: 400"},
        })
    return _form(properties)


def _openai_answer() -> dict:
    ok = {"description": "json/verbose_json as JSON, text/srt/vtt as text, stream=true as server-sent events",
          "content": {"application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/Transcription"},
                                                                 {"$ref": "#/components/schemas/VerboseTranscription"}]}},
                      "text/plain": {"schema": {"type": "string"}}, "text/vtt": {"schema": {"type": "string"}},
                      "text/event-stream": {"schema": {"type": "string"}}}}
    return _answers(ok, OPENAI_ERROR, 400, 401, 404, 413, 415, 503)


def _original(description: str) -> dict:
    return {"post": {"summary": description, "tags": ["original"],
                     "requestBody": _form({"lang": LANGUAGE}),
                     "responses": _answers(_json({"$ref": "#/components/schemas/OriginalResult"}), ERROR,
                                           400, 401, 413, 415, 422, 500, 503)}}


def _get(summary: str, tag: str, schema: dict | None = None, mimetype: str = "application/json") -> dict:
    body = {"description": "OK", "content": {mimetype: {"schema": schema or {"type": "object"}}}}
    return {"get": {"summary": summary, "tags": [tag], "responses": {"200": body}}}


def _job_paths() -> dict:
    job = {"$ref": "#/components/schemas/Job"}
    id_param = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "/v1/jobs": {
            "post": {"summary": "Submit a long recording as a job (same form as transcriptions)", "tags": ["jobs"],
                     "requestBody": _openai_form(transcription=True),
                     "responses": {"202": _json(job, "Accepted"),
                                   **_answers(_json(job), OPENAI_ERROR, 400, 413, 415, 503)}},
            "get": {"summary": "This client's jobs, newest first", "tags": ["jobs"],
                    "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 100}}],
                    "responses": {"200": _json({"type": "object"})}}},
        "/v1/jobs/{job_id}": {
            "get": {"summary": "A job's status and progress", "tags": ["jobs"], "parameters": id_param,
                    "responses": _answers(_json(job), OPENAI_ERROR, 400, 404)},
            "delete": {"summary": "Cancel a job, or delete a finished one", "tags": ["jobs"], "parameters": id_param,
                       "responses": _answers(_json(job), OPENAI_ERROR, 404)}},
        "/v1/jobs/{job_id}/result": {
            "get": {"summary": "A finished job's transcript in its response_format", "tags": ["jobs"],
                    "parameters": id_param, "responses": _answers(_json({"type": "object"}), OPENAI_ERROR, 404, 409, 410)}},
    }


def _schemas() -> dict:
    usage = {"type": "object", "properties": {"type": {"const": "duration"}, "seconds": {"type": "number"}}}
    segment = {"type": "object", "properties": {name: {"type": "number"} for name in (
        "start", "end", "avg_logprob", "no_speech_prob", "compression_ratio", "temperature")} | {
        "id": {"type": "integer"}, "seek": {"type": "integer"}, "text": {"type": "string"},
        "tokens": {"type": "array", "items": {"type": "integer"}}}}
    word = {"type": "object", "properties": {"word": {"type": "string"}, "start": {"type": "number"},
                                             "end": {"type": "number"}}}
    # Ours, present only when segments failed after their retries (also in X-ASR-Failed-Segments).
    failed = {"type": "integer", "minimum": 1}
    return {
        "Error": {"type": "object", "properties": {"code": {"type": "integer"}, "msg": {"type": "string"}}},
        "OpenAIError": {"type": "object", "properties": {"error": {"type": "object", "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]}}}}},
        "Transcription": {"type": "object", "properties": {"text": {"type": "string"}, "model": {"type": "string"},
                                                           "usage": usage, "failed_segments": failed}},
        "VerboseTranscription": {"type": "object", "properties": {
            "task": {"type": "string"}, "language": {"type": "string"}, "duration": {"type": "number"},
            "text": {"type": "string"}, "model": {"type": "string"}, "usage": usage,
            "segments": {"type": "array", "items": segment}, "words": {"type": "array", "items": word},
            "failed_segments": failed}},
        "OriginalResult": {"type": "object", "properties": {
            "code": {"type": "integer"}, "msg": {"type": "string"}, "data": {"type": "string"},
            "stats": {"type": "object"}, "segments": {"type": "array", "items": {"type": "object"}},
            "text": {"type": "string"}, "language": {"type": "string"}, "duration": {"type": "number"},
            "model": {"type": "string"}, "engine": {"type": "string"}, "worker": {"type": "string"}}},
        "Model": {"type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                                                   "created": {"type": "integer"}, "owned_by": {"type": "string"}}},
        "Job": {"type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "transcription.job"},
                                                 "status": {"type": "string"}, "progress": {"type": "object"}}},
    }


def document() -> dict:
    model = {"$ref": "#/components/schemas/Model"}
    paths = {
        "/asr": _original("Transcribe with VAD; SRT in data"),
        "/asr_simple": _original("Transcribe in one pass (short audio); text in data"),
        "/v1/audio/transcriptions": {"post": {"summary": "OpenAI: transcribe", "tags": ["openai"],
                                              "requestBody": _openai_form(transcription=True),
                                              "responses": _openai_answer()}},
        "/v1/audio/translations": {"post": {"summary": "OpenAI: translate into English (multilingual Whisper)",
                                            "tags": ["openai"], "requestBody": _openai_form(transcription=False),
                                            "responses": _openai_answer()}},
        "/v1/models": _get("OpenAI: the served model and its aliases", "openai",
                           {"type": "object", "properties": {"object": {"const": "list"},
                                                             "data": {"type": "array", "items": model}}}),
        "/v1/models/{model_id}": {"get": {
            "summary": "OpenAI: one model (the served id or an alias)", "tags": ["openai"],
            "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _answers(_json(model), OPENAI_ERROR, 404)}},
        **_job_paths(),
        "/health": _get("Ready (200) or loading/broken (503), with queue and progress", "operations"),
        "/stats": _get("Request counts, latency percentiles, real-time factor", "operations"),
        "/metrics": _get("Prometheus metrics", "operations", {"type": "string"}, "text/plain"),
        "/openapi.json": _get("This document", "operations"),
        "/": _get("The page for people: upload or record, the streamed transcript, the fleet", "operations",
                  {"type": "string"}, "text/html"),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ASR fleet", "version": "1.0",
                 "description": "Speech recognition behind one port: the original /asr endpoints and OpenAI's "
                                "audio API. Every response names the model (X-ASR-Model) and worker (X-ASR-Worker)."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "only when the fleet has an API key file"}}},
    }
