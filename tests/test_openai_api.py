"""OpenAI's audio API, complete: models, word timestamps, readable cues,
usage, prompt and temperature, and a 400 naming every parameter we cannot
honour. One real Gunicorn worker on Whisper tiny.en, driven by the official
openai client where it can send the request."""

import itertools
import re

import flask
import openai
import pytest
import requests

from app import create_app
from app.routers import openai_params
from app.settings import Settings

pytestmark = pytest.mark.worker

JFK = "jfk.flac"
READING = "sense_and_sensibility_01_austen_64kb-0870.wav"


@pytest.fixture(scope="module")
def worker(module_worker, audio_dir):
    return module_worker(ASR_ENGINE="whisper", ASR_MODEL="tiny.en", ASR_INSTANCE_NAME="openai-api")


@pytest.fixture()
def client(worker):
    return openai.OpenAI(base_url=worker.url + "/v1", api_key="unused", max_retries=0)


def transcribe(client, path, **kwargs):
    with open(path, "rb") as handle:
        return client.audio.transcriptions.create(model=kwargs.pop("model", "whisper-1"), file=handle, **kwargs)


def post(worker, audio_dir, path="/v1/audio/transcriptions", name=JFK, **form):
    with open(audio_dir / name, "rb") as handle:
        return requests.post(worker.url + path, files={"file": handle}, data=form, timeout=120)


def test_models_are_listed_and_retrieved_in_openai_shape(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["whisper-tiny.en", "whisper-1"]
    assert all(m.object == "model" and m.owned_by == "asr-fleet" and m.created > 0 for m in models)
    assert client.models.retrieve("whisper-tiny.en").id == "whisper-tiny.en"
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    with pytest.raises(openai.NotFoundError) as error:
        client.models.retrieve("gpt-4o-transcribe")
    assert error.value.code == "model_not_found" and "whisper-tiny.en" in error.value.message


def test_served_id_and_alias_transcribe_and_a_typo_is_model_not_found(client, audio_dir):
    served = transcribe(client, audio_dir / JFK, model="whisper-tiny.en")
    assert served.text == transcribe(client, audio_dir / JFK, model="whisper-1").text
    with pytest.raises(openai.NotFoundError) as error:
        transcribe(client, audio_dir / JFK, model="whisper-l")
    assert (error.value.code, error.value.body["param"]) == ("model_not_found", "model")


def test_word_timestamps_are_monotonic_inside_their_segment_and_give_the_text(client, audio_dir):
    for name in (JFK, READING):
        result = transcribe(client, audio_dir / name, response_format="verbose_json",
                            timestamp_granularities=["word", "segment"])
        words = result.words
        assert len(words) >= 8
        assert " ".join(w.word for w in words) == result.text
        assert all(0 <= w.start <= w.end <= result.duration for w in words)
        assert all(a.end <= b.start for a, b in itertools.pairwise(words))
        for segment in result.segments:
            inside = [w for w in words if segment.start <= w.start and w.end <= segment.end]
            assert " ".join(w.word for w in inside) == segment.text
    only_words = transcribe(client, audio_dir / JFK, response_format="verbose_json",
                            timestamp_granularities=["word"])
    assert only_words.segments is None and only_words.words


def test_sensevoice_words_come_from_funasrs_ctc_timestamps(ready_app, tiny_model_dir, audio_dir):
    http = ready_app(Settings(engine="funasr", model=str(tiny_model_dir), instance_name="sv-words")).test_client()
    with open(audio_dir / READING, "rb") as handle:
        body = http.post("/v1/audio/transcriptions", data={
            "file": (handle, READING), "response_format": "verbose_json", "language": "en",
            "timestamp_granularities[]": ["word", "segment"]}).get_json()
    words, segments = body["words"], body["segments"]
    assert words and segments, body  # random weights: noise words, but timed ones
    assert all(0 <= w["start"] <= w["end"] <= body["duration"] for w in words)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(words))
    for segment in segments:
        inside = [w for w in words if segment["start"] <= w["start"] and w["end"] <= segment["end"]]
        assert inside and all(w["word"] in segment["text"] for w in inside)



@pytest.mark.parametrize("form, words", [
    ({}, False), ({"response_format": "text"}, False), ({"response_format": "verbose_json"}, False),
    ({"response_format": "verbose_json", "timestamp_granularities[]": "word"}, True),
    ({"response_format": "srt"}, True), ({"response_format": "vtt"}, True),
])
def test_words_are_timed_only_for_answers_that_show_them(ready_app, tiny_model_dir, form, words):
    app = ready_app(Settings(engine="funasr", model=str(tiny_model_dir), instance_name="sv-options"))
    with app.test_request_context("/v1/audio/transcriptions", method="POST", data=form):
        assert openai_params.parse(flask.request.form, task="transcribe").options.words is words

def test_srt_and_vtt_cues_are_readable_and_carry_the_whole_text(client, audio_dir):
    text = transcribe(client, audio_dir / READING).text
    for response_format, marker in (("srt", ","), ("vtt", ".")):
        body = transcribe(client, audio_dir / READING, response_format=response_format)
        cues = re.findall(r"(\d\d:\d\d:\d\d[.,]\d{3}) --> (\d\d:\d\d:\d\d[.,]\d{3})\n(.+?)\n(?:\n|$)", body, re.DOTALL)
        assert len(cues) >= 2, body
        for start, end, lines in cues:
            assert marker in start and seconds(end) - seconds(start) <= 7.0
            assert len(lines.split("\n")) <= 2 and all(len(line) <= 42 for line in lines.split("\n")), lines
        assert " ".join(lines.replace("\n", " ") for _, _, lines in cues) == text


def seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.replace(",", ".").split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


def test_usage_in_json_and_verbose_json_and_scores_are_whispers_own(worker, client, audio_dir):
    body = post(worker, audio_dir).json()
    assert body["usage"] == {"type": "duration", "seconds": 11.0}
    verbose = transcribe(client, audio_dir / JFK, response_format="verbose_json")
    assert verbose.usage.type == "duration" and verbose.usage.seconds == pytest.approx(11.0)
    for segment in verbose.segments:
        assert -1.0 < segment.avg_logprob < 0 and 0 <= segment.no_speech_prob < 0.5
        assert 0 < segment.compression_ratio < 2.4


def test_prompt_is_whispers_initial_prompt(client, audio_dir):
    plain = transcribe(client, audio_dir / JFK).text
    styled = transcribe(client, audio_dir / JFK,
                        prompt="i think so yes we went there and then we talked for a while about the weather").text
    assert plain.startswith("And so") and "," in plain
    # The prompt's style (lower case, no punctuation) carries over to the answer.
    assert styled.startswith("and so my fellow") and "," not in styled and styled.endswith("your country")


def test_temperature_is_checked_then_passed_on(worker, client, audio_dir):
    sampled = transcribe(client, audio_dir / JFK, temperature=1.0).text
    assert "country" in sampled.lower()
    for value in ("1.5", "-0.1", "nan", "warm"):
        response = post(worker, audio_dir, temperature=value)
        assert response.status_code == 400 and response.json()["error"]["param"] == "temperature", value


@pytest.mark.parametrize("form, param, reason", [
    ({"include[]": "logprobs"}, "include", "include 'logprobs' is not supported"),
    ({"chunking_strategy": '{"type": "semantic"}'}, "chunking_strategy", "is not supported"),
    ({"chunking_strategy": "fixed"}, "chunking_strategy", "is not supported"),
    ({"timestamp_granularities[]": "character"}, "timestamp_granularities", "is not one of segment, word"),
    ({"stream": "perhaps"}, "stream", "stream must be true or false"),
    ({"stream": "true", "response_format": "srt"}, "stream", "response_format must be json or text"),
    ({"language": "tlh"}, "language", "language 'tlh' is not supported by whisper-tiny.en"),
    ({"response_format": "docx"}, "response_format", "is not one of json"),
])
def test_what_we_cannot_honour_is_a_400_naming_the_parameter(worker, audio_dir, form, param, reason):
    response = post(worker, audio_dir, **form)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param) and reason in error["message"]


def test_an_unsupported_language_stays_422_on_the_original_endpoint(worker, audio_dir):
    with open(audio_dir / JFK, "rb") as handle:
        response = requests.post(worker.url + "/asr", files={"file": handle}, data={"lang": "tlh"}, timeout=60)
    assert response.status_code == 422 and response.json()["code"] == 422


def test_an_english_only_model_cannot_translate(client, audio_dir):
    with open(audio_dir / JFK, "rb") as handle, pytest.raises(openai.BadRequestError) as error:
        client.audio.translations.create(model="whisper-1", file=handle)
    assert "cannot translate" in error.value.message


def test_engines_without_word_times_or_translation_say_so(ready_app):
    http = ready_app(Settings(engine="pocketsphinx", instance_name="no-words")).test_client()
    words = http.post("/v1/audio/transcriptions", data={"timestamp_granularities[]": "word"})
    assert words.status_code == 400
    assert "pocketsphinx engine does not time words" in words.get_json()["error"]["message"]
    translation = http.post("/v1/audio/translations", data={})
    assert translation.status_code == 400 and "cannot translate" in translation.get_json()["error"]["message"]


def test_openapi_describes_every_route(worker):
    document = requests.get(worker.url + "/openapi.json", timeout=5).json()
    assert document["openapi"].startswith("3.")
    app = create_app(Settings(engine="pocketsphinx"), start=False)
    routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule): rule.methods - {"HEAD", "OPTIONS"}
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    for path, methods in routes.items():
        assert path in document["paths"], path
        assert {m.lower() for m in methods} <= set(document["paths"][path]), path
