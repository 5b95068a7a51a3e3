"""A real Gunicorn worker on the default settings: offline, that is the
embedded Whisper base. Accuracy is measured through /asr, on the shared
recordings as clients send them."""

import psutil
import pytest
import requests

from tests.speech import (
    ENGLISH,
    MANDARIN,
    character_error_rate,
    encode,
    reference,
    word_error_rate,
)

pytestmark = pytest.mark.worker

FORMATS = ["wav-s16-44k-stereo", "mp3", "ogg-vorbis", "m4a-8k"]


@pytest.fixture(scope="module")
def worker(module_worker, tmp_path_factory, audio_dir):
    # No ASR_ENGINE: the default (auto) must find no FunASR model offline and
    # serve the embedded Whisper base, as `make serve` does on a fresh machine.
    return module_worker(ASR_INSTANCE_NAME="whisper-test", ASR_MODEL_CACHE=str(tmp_path_factory.mktemp("ms")))


def asr(worker, data: bytes, **form) -> dict:
    response = requests.post(worker.url + "/asr", files={"file": ("audio", data)}, data=form, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_every_answer_name_the_embedded_model(worker, audio_dir):
    health = requests.get(worker.url + "/health", timeout=5).json()
    assert (health["engine"], health["model"], health["device"]) == ("whisper", "whisper-base", "cpu")
    response = requests.post(worker.url + "/asr", files={"file": (audio_dir / "jfk.flac").read_bytes()},
                             timeout=60)
    assert response.headers["X-ASR-Model"] == "whisper-base" and response.json()["model"] == "whisper-base"


def test_english_word_error_rate_over_four_client_formats(worker, audio_dir, tmp_path):
    references, hypotheses = [], []
    for name in ENGLISH:
        for fmt in FORMATS:
            body = asr(worker, encode(audio_dir / name, fmt, tmp_path), lang="en")
            references.append(reference(name))
            hypotheses.append(body["text"])
    error_rate = word_error_rate(references, hypotheses)
    print(f"Whisper base WER through /asr, {len(ENGLISH)} clips x {FORMATS}: {error_rate:.3f}")
    assert error_rate <= 0.08, list(zip(references, hypotheses))


@pytest.mark.parametrize("lang", ["zh", "auto"])
def test_mandarin_character_error_rate(worker, audio_dir, lang):
    body = asr(worker, (audio_dir / MANDARIN).read_bytes(), lang=lang)
    assert body["language"] == "zh"
    assert character_error_rate(reference(MANDARIN), body["text"]) <= 0.10, body["text"]


def test_srt_cues_follow_the_speech(worker, audio_dir):
    body = asr(worker, (audio_dir / "jfk.flac").read_bytes())
    segments = body["segments"]
    # JFK pauses after "for you": Whisper's own timestamps split the window there.
    assert len(segments) >= 2
    times = [t for s in segments for t in (s["start"], s["end"])]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= body["duration"]
    # The speech starts at 0.32 s: the first cue starts with the VAD's 0.2 s
    # of lead-in, not at 0.
    assert 0.1 <= segments[0]["start"] <= 0.4
    # Cues may split a segment further, to readable lengths, never merge two.
    assert body["data"].startswith("1\n00:00:00,") and body["data"].count(" --> ") >= len(segments)


def test_a_language_the_model_lacks_is_a_422(worker, audio_dir):
    response = requests.post(worker.url + "/asr", files={"file": (audio_dir / "jfk.flac").read_bytes()},
                             data={"lang": "tlh"}, timeout=30)
    assert response.status_code == 422 and "'tlh' is not supported by whisper-base" in response.json()["msg"]


def test_resident_memory_stays_under_700_mb(worker, audio_dir):
    asr(worker, (audio_dir / "jfk.flac").read_bytes())
    master = psutil.Process(worker.process.pid)
    resident = sum(p.memory_info().rss for p in [master, *master.children(recursive=True)])
    print(f"Whisper base worker RSS (master + worker): {resident / 2**20:.0f} MB")
    assert resident <= 700 * 2**20
