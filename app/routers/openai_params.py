"""The form of /v1/audio/transcriptions and /translations, checked before
any upload is read: every parameter we cannot honour is a 400 naming it,
never silently ignored."""

from __future__ import annotations

import dataclasses
import json

from app import formats
from app.engines import DecodeOptions, Engine
from app.errors import BadRequest, Unprocessable
from app.routers.common import transcriber
from app.routers.openai_models import check_model

GRANULARITIES = ("segment", "word")
# Streaming sends text as it is recognised: only the text-only formats.
STREAMED_FORMATS = ("json", "text")
# Subtitle cues are cut at word boundaries: these need the words timed.
CUED_FORMATS = ("srt", "vtt")
TRUE, FALSE = ("true", "1"), ("false", "0", "")


@dataclasses.dataclass(frozen=True)
class OpenAIRequest:
    model: str
    response_format: str
    granularities: frozenset[str]
    stream: bool
    options: DecodeOptions


def parse(form, *, task: str) -> OpenAIRequest:
    model = check_model(form.get("model"))
    engine = transcriber().engine
    response_format = response_format_field(form)
    _refuse_unsupported(form)
    granularities = _granularities(form, engine)
    stream = _flag(form.get("stream"), "stream")
    if stream and response_format not in STREAMED_FORMATS:
        raise BadRequest(f"stream=true gives text events; response_format must be json or text, "
                         f"not {response_format!r}", param="stream")
    if task != "transcribe" and task not in getattr(engine, "tasks", ("transcribe",)):
        raise BadRequest(f"{engine.model} cannot translate (an English-only or non-Whisper model); "
                         "serve a multilingual Whisper model for /v1/audio/translations", param="model")
    # Translations take no language: Whisper detects it and answers in English.
    language = language_field(form.get("language")) if task == "transcribe" else "auto"
    options = DecodeOptions(language=language, task=task, prompt=(form.get("prompt") or "").strip() or None,
                            temperature=_temperature(form.get("temperature")),
                            words=response_format in CUED_FORMATS or "word" in granularities)
    return OpenAIRequest(model, response_format, granularities, stream, options)


def _refuse_unsupported(form) -> None:
    include = form.getlist("include[]") + form.getlist("include")
    if include:
        raise BadRequest(f"include {', '.join(include)!r} is not supported: this server returns no token "
                         "logprobs (verbose_json has avg_logprob per segment)", param="include")
    strategy = (form.get("chunking_strategy") or "auto").strip()
    if strategy != "auto" and _json_object(strategy) != {"type": "server_vad"}:
        raise BadRequest(f"chunking_strategy {strategy!r} is not supported: the server always cuts at "
                         "pauses with its own VAD; send 'auto' or {\"type\": \"server_vad\"}",
                         param="chunking_strategy")


def _json_object(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _granularities(form, engine: Engine) -> frozenset[str]:
    asked = frozenset(form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities"))
    unknown = sorted(asked - set(GRANULARITIES))
    if unknown:
        raise BadRequest(f"timestamp_granularities {', '.join(unknown)!r} is not one of segment, word",
                         param="timestamp_granularities")
    if "word" in asked and not getattr(engine, "word_timestamps", False):
        raise BadRequest(f"word timestamps are not available from {engine.model}: the {engine.name} "
                         "engine does not time words; ask for segment only", param="timestamp_granularities")
    return asked or frozenset({"segment"})


def _flag(value: str | None, name: str) -> bool:
    text = (value or "").strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise BadRequest(f"{name} must be true or false, not {value!r}", param=name)


def _temperature(value: str | None) -> float:
    if value is None or not value.strip():
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        raise BadRequest(f"temperature must be a number from 0 to 1, not {value!r}", param="temperature") from None
    if not 0.0 <= temperature <= 1.0:  # NaN fails this too
        raise BadRequest(f"temperature must be from 0 to 1, not {value!r}", param="temperature")
    return temperature


def response_format_field(form) -> str:
    """The `response_format` field, json when absent (also /v1/jobs)."""
    response_format = form.get("response_format") or "json"
    if response_format not in formats.RESPONSE_FORMATS:
        raise BadRequest(f"response_format {response_format!r} is not one of "
                         f"{', '.join(formats.RESPONSE_FORMATS)}", param="response_format")
    return response_format


def language_field(value: str | None) -> str:
    """The `language` field as /v1 takes it (also /v1/jobs)."""
    try:
        return transcriber().check_language(value)
    except Unprocessable as error:
        # OpenAI's contract: an unsupported language is a 400 on `language`
        # (the original endpoints keep their 422).
        raise BadRequest(error.message, param="language") from None
