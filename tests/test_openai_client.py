"""The official openai client, unchanged, through a real fleet's front port
(supervisord, Nginx, two Gunicorn workers on Whisper base): models, every
response format, word times, streaming, translations and errors."""

import openai
import pytest
from fleet_harness import whisper_fleet

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, audio_dir):
    with whisper_fleet(tmp_path_factory.mktemp("openai"), "base").running(2) as fleet:
        yield fleet


@pytest.fixture()
def client(fleet):
    return openai.OpenAI(base_url=fleet.url + "/v1", api_key="unused", max_retries=0)


def test_models_list_what_the_fleet_serves(client):
    assert [model.id for model in client.models.list()] == ["whisper-base", "whisper-1"]  # served, alias
    assert client.models.retrieve("whisper-base").owned_by
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("whisper-large")


def transcribe(client, path, **kwargs):
    with open(path, "rb") as handle:
        return client.audio.transcriptions.create(model=kwargs.pop("model", "whisper-1"), file=handle, **kwargs)


def test_json(client, audio_dir):
    result = transcribe(client, audio_dir / "jfk.flac")
    assert result.text == ("And so my fellow Americans, ask not what your country can do for you, "
                           "ask what you can do for your country.")
    assert result.to_dict()["usage"] == {"type": "duration", "seconds": 11.0}
    with pytest.raises(openai.NotFoundError) as error:
        transcribe(client, audio_dir / "jfk.flac", model="whisper-l")
    assert error.value.code == "model_not_found"


def test_verbose_json_has_segments_and_language(client, audio_dir):
    result = transcribe(client, audio_dir / "jfk.flac", response_format="verbose_json",
                        timestamp_granularities=["segment"], language="en")
    assert result.language == "en" and result.duration == pytest.approx(11.0, abs=0.05)
    assert len(result.segments) >= 2
    assert all(s.end > s.start for s in result.segments)
    assert result.text == " ".join(s.text for s in result.segments)
    assert all(s.avg_logprob < 0 and 0 <= s.no_speech_prob <= 1 for s in result.segments)


def test_word_times_give_the_text(client, audio_dir):
    result = transcribe(client, audio_dir / "jfk.flac", response_format="verbose_json",
                        timestamp_granularities=["word"])
    assert " ".join(w.word for w in result.words) == result.text
    assert all(a.end <= b.start for a, b in zip(result.words, result.words[1:]))


@pytest.mark.parametrize("response_format, start", [
    ("text", ""), ("srt", "1\n00:00:"), ("vtt", "WEBVTT\n\n00:00:")])
def test_plain_formats(client, audio_dir, response_format, start):
    result = transcribe(client, audio_dir / "sense_and_sensibility_01_austen_64kb-0880.wav",
                        response_format=response_format)
    assert isinstance(result, str) and result.startswith(start)
    # Subtitle cues wrap their lines (app/cues.py).
    assert "ill-disposed young man" in result.replace("\n", " ")


def test_errors_arrive_as_openai_exceptions(client, audio_dir):
    with pytest.raises(openai.BadRequestError) as error:
        transcribe(client, audio_dir / "edge" / "null.wav")
    assert error.value.status_code == 400
    assert error.value.body["message"].startswith("no audio samples")
    # OpenAI's contract: an unsupported language is a 400 on `language` (the original endpoints: 422).
    with pytest.raises(openai.BadRequestError) as error:
        transcribe(client, audio_dir / "cards001.wav", language="tlh")
    assert error.value.body["param"] == "language"
    with pytest.raises(openai.BadRequestError, match="response_format"):
        transcribe(client, audio_dir / "cards001.wav", response_format="mp4")
    with pytest.raises(openai.BadRequestError) as error:
        transcribe(client, audio_dir / "cards001.wav", include=["logprobs"])
    assert error.value.body["param"] == "include"


def test_streamed_transcript_equals_the_plain_one_with_default_batching(client, audio_dir):
    plain = transcribe(client, audio_dir / "sense_and_sensibility_01_austen_64kb-0890.wav").text
    with open(audio_dir / "sense_and_sensibility_01_austen_64kb-0890.wav", "rb") as handle:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=handle, stream=True))
    assert events[-1].type == "transcript.text.done" and events[-1].text == plain
    assert "".join(e.delta for e in events[:-1]) == plain


def test_a_translation_of_mandarin_is_english(client, audio_dir):
    with open(audio_dir / "zh" / "asr_example.wav", "rb") as handle:
        result = client.audio.translations.create(model="whisper-1", file=handle, response_format="verbose_json")
    print(f"translation of zh/asr_example.wav: {result.text!r}")
    assert result.task == "translate" and result.language == "zh"
    assert result.text.isascii() and "welcome" in result.text.lower()
    assert result.to_dict()["usage"]["seconds"] == pytest.approx(5.5, abs=0.1)
