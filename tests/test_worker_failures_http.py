"""Failures inside a request, as the client sees them over HTTP.

Segments failing after their retries: /asr and /v1/audio/transcriptions
answer 200 with exactly the other segments (the clean answer's, close to the
reference text) and the count of failed ones (/asr `stats.failed_segments`;
/v1 `failed_segments` and `X-ASR-Failed-Segments`), each tried 1 +
ASR_SEGMENT_RETRIES times; every segment failing is a 500 with one line in
each API's shape. A healthy model cannot be made to fail on one chosen
segment, and a Gunicorn worker cannot be handed an engine by a test, so this
half runs create_app with Flask's test client (route, decoding, VAD, batcher,
error handler: all of the path but Gunicorn, which the deadline half runs)
and the real PocketSphinx engine subclassed to fail on poisoned clips: the
windows the app's own VAD cuts over the chosen cards, by their exact samples.

The deadline: a real Gunicorn worker, one segment per model call, given two
400 s recordings at once (/asr and /v1) that its inference thread cannot
finish within ASR_REQUEST_TIMEOUT: each answers 503 + `Retry-After` with one
line naming the deadline in its API's shape, not before the deadline; the
queued segments are dropped unrun (/metrics' segment counter grows by at most
the one running at the answers while the queue drains); the next request gets
the same text as before, one more segment run.
"""

import collections
import concurrent.futures
import hashlib
import io
import re
import time
import types

import numpy as np
import pytest
import requests
import soundfile
from machine import SHARED_AUDIO, wait_for
from speech import CARDS, LIBRIVOX, audio_bytes, word_error_rate

from app import audio, create_app, service
from app.engines.pocketsphinx_engine import PocketSphinxEngine
from app.settings import Settings

pytestmark = pytest.mark.worker

RATE = 16000
# "four queen of clubs" and "five five": "queen" and "five" are said nowhere else.
POISONED_CARDS = (1, 3)
# PocketSphinx on the cards, its own test data: a word or two of the deck's 17 misheard ("for" for "four").
MAX_CARDS_WER = 0.2
DEADLINE_S = 25
# Enough work that one inference thread cannot finish it in DEADLINE_S (PocketSphinx: ~0.15 s a
# second of audio), short enough that the length-based deadline (app/jobs/pace.py, 21.6 s with the
# assumed speed below) stays under ASR_REQUEST_TIMEOUT, which is then this request's deadline.
LONG_S = 400
# Segments the model has run: the sum of every batch's size.
SEGMENTS_RUN = "asr_batch_size_sum"


def fingerprint(clip: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).hexdigest()


class PoisonableEngine(PocketSphinxEngine):
    """The real engine, except that a batch holding a poisoned clip raises
    (as a model failing on one input would), and every batch while fail_all."""

    def __init__(self):
        super().__init__()
        self.poisoned: set[str] = set()
        self.fail_all = False
        self.attempts: collections.Counter[str] = collections.Counter()

    def transcribe_batch(self, audios, options):
        prints = [fingerprint(clip) for clip in audios]
        self.attempts.update(prints)
        if self.fail_all or self.poisoned.intersection(prints):
            raise RuntimeError("poisoned clip in this batch")
        return super().transcribe_batch(audios, options)


def card_references() -> list[str]:
    """cards.transcription's lines ("<s> ten of clubs </s> (001)"), in CARDS' order."""
    by_number = {}
    for line in (SHARED_AUDIO / "cards.transcription").read_text().splitlines():
        if match := re.match(r"<s>(.*)</s>\s*\((\d+)\)", line.strip()):
            by_number[f"cards{match.group(2)}.wav"] = match.group(1).strip()
    return [by_number[name] for name in CARDS]


def read_pcm(name: str) -> np.ndarray:
    samples, rate = soundfile.read(SHARED_AUDIO / name, dtype="int16")
    assert rate == RATE and samples.ndim == 1, name
    return samples


@pytest.fixture(scope="module")
def poisonable(audio_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service, "load_engine", lambda settings: PoisonableEngine.load())
        app = create_app(Settings(engine="pocketsphinx", instance_name="poisonable"))
        assert app.extensions["asr"].wait_ready(120), app.extensions["asr"].reason
    return app


@pytest.fixture(scope="module")
def deck(poisonable):
    """The five cards in one recording, a second of silence around each; the
    windows (start, end, fingerprint) the worker cuts it into, and those over
    the poisoned cards."""
    gap = np.zeros(RATE, dtype=np.int16)
    parts, spans = [gap], []
    for name in CARDS:
        start = sum(map(len, parts)) / RATE
        parts += [read_pcm(name), gap]
        spans.append((start, start + len(parts[-2]) / RATE))
    data = audio_bytes(np.concatenate(parts))
    samples = audio.decode(data, max_seconds=60, ffmpeg_timeout=60)
    windows = [(s.start, s.end, fingerprint(s.cut(samples)))
               for s in poisonable.extensions["asr"].segmenter.split(samples)]
    poisoned = [w for w in windows if any(w[0] < spans[i][1] and w[1] > spans[i][0] for i in POISONED_CARDS)]
    return types.SimpleNamespace(data=data, windows=windows, poisoned=poisoned, references=card_references())


def send(client, path, data, **form):
    return client.post(path, data={"file": (io.BytesIO(data), "deck.wav"), **form})


def test_failed_segments_leave_the_rest_of_the_answer_and_are_counted(poisonable, deck):
    engine, client = poisonable.extensions["asr"].engine, poisonable.test_client()
    clean = send(client, "/asr", deck.data).get_json()
    clean_v1 = send(client, "/v1/audio/transcriptions", deck.data, response_format="json")
    assert clean["stats"]["total_segments"] == len(deck.windows), (clean["stats"], deck.windows)
    assert word_error_rate([" ".join(deck.references)], [clean["text"]]) <= MAX_CARDS_WER, clean["text"]
    assert "queen" in clean["text"] and "five" in clean["text"]
    assert clean_v1.headers["X-ASR-Failed-Segments"] == "0" and "failed_segments" not in clean_v1.get_json()

    poisoned, total, failed = deck.poisoned, len(deck.windows), len(deck.poisoned)
    assert 0 < failed < total
    engine.poisoned, engine.attempts = {w[2] for w in poisoned}, collections.Counter()
    response = send(client, "/asr", deck.data)
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["stats"] == {"total_segments": total, "successful_segments": total - failed,
                             "failed_segments": failed, "success_rate": round((total - failed) / total, 4)}
    retries = poisonable.extensions["asr"].settings.segment_retries
    assert [engine.attempts[w[2]] for w in poisoned] == [retries + 1] * failed
    # The survivors are the clean answer's own segments, times and text, and nothing else.
    lost = {round(w[0], 3) for w in poisoned}
    assert body["segments"] == [s for s in clean["segments"] if s["start"] not in lost]
    kept = [ref for index, ref in enumerate(deck.references) if index not in POISONED_CARDS]
    assert word_error_rate([" ".join(kept)], [body["text"]]) <= MAX_CARDS_WER, body["text"]
    assert "queen" not in body["text"] and "five" not in body["text"]
    assert body["data"].count(" --> ") == len([s for s in body["segments"] if s["text"]])

    for response_format in ("json", "text"):
        response = send(client, "/v1/audio/transcriptions", deck.data, response_format=response_format)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.headers["X-ASR-Failed-Segments"] == str(failed)
        if response_format == "json":
            assert response.get_json() == {**clean_v1.get_json(), "text": body["text"], "failed_segments": failed}
        else:
            assert response.get_data(as_text=True) == body["text"]
    engine.poisoned = set()


def test_every_segment_failing_is_a_500_with_one_line_in_each_shape(poisonable, deck):
    engine, client = poisonable.extensions["asr"].engine, poisonable.test_client()
    reason = f"transcription failed for all {len(deck.windows)} segments"
    engine.poisoned, engine.fail_all = set(), True  # nothing left over from a test that failed midway
    try:
        asr = send(client, "/asr", deck.data)
        v1 = send(client, "/v1/audio/transcriptions", deck.data)
    finally:
        engine.fail_all = False
    assert (asr.status_code, asr.get_json()) == (500, {"code": 500, "msg": reason})
    assert (v1.status_code, v1.get_json()) == (500, {"error": {"message": reason, "type": "server_error",
                                                               "param": None, "code": "asr_error"}})
    assert "Retry-After" not in asr.headers and "Retry-After" not in v1.headers
    again = send(client, "/asr", deck.data).get_json()  # the same app serves again
    assert again["stats"]["failed_segments"] == 0 and "queen" in again["text"]


def post(url: str, path: str, data: bytes, **form) -> requests.Response:
    return requests.post(url + path, files={"file": ("speech.wav", data)}, data=form, timeout=180)


def counter(worker, name: str) -> float:
    text = requests.get(worker.url + "/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def long_recording() -> bytes:
    """The LibriVox readings over and over, a short pause between them, for LONG_S seconds."""
    clips, gap = [read_pcm(name) for name in LIBRIVOX], np.zeros(RATE * 3 // 10, dtype=np.int16)
    parts: list[np.ndarray] = []
    while sum(map(len, parts)) < LONG_S * RATE:
        for clip in clips:
            parts += [clip, gap]
    return audio_bytes(np.concatenate(parts))


def test_past_the_deadline_each_api_answers_503_and_its_queued_segments_never_run(start_worker, audio_dir):
    # The assumed speed keeps the length-based deadline under ASR_REQUEST_TIMEOUT (see LONG_S).
    worker = start_worker(ASR_ENGINE="pocketsphinx", ASR_BATCH_MAX_ITEMS="1", ASR_ASSUMED_RTF="0.001",
                          ASR_REQUEST_TIMEOUT=str(DEADLINE_S), ASR_INSTANCE_NAME="deadline")
    card = (SHARED_AUDIO / CARDS[0]).read_bytes()
    before = post(worker.url, "/asr", card).json()
    assert word_error_rate([card_references()[0]], [before["text"]]) <= MAX_CARDS_WER, before["text"]
    ran_before, audio_before = counter(worker, SEGMENTS_RUN), counter(worker, "asr_audio_seconds_total")

    recording = long_recording()

    def timed(path: str, **form) -> tuple[requests.Response, float]:
        started = time.monotonic()
        return post(worker.url, path, recording, **form), time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        asr_call = pool.submit(timed, "/asr")
        v1_call = pool.submit(timed, "/v1/audio/transcriptions", response_format="json")
        (asr, asr_s), (v1, v1_s) = asr_call.result(), v1_call.result()
    ran_at_answers = counter(worker, SEGMENTS_RUN)
    print(f"503 after {asr_s:.1f} s (/asr) and {v1_s:.1f} s (/v1); {ran_at_answers - ran_before} segments, "
          f"{counter(worker, 'asr_audio_seconds_total') - audio_before:.0f} s of 2 x {LONG_S} s run")

    assert (asr.status_code, v1.status_code) == (503, 503), (asr.text, v1.text)
    assert asr.headers["Retry-After"] == v1.headers["Retry-After"] == "1"
    reason = "request took longer than the per-request deadline"
    assert asr.json() == {"code": 503, "msg": reason}
    assert v1.json() == {"error": {"message": reason, "type": "server_error", "param": None,
                                   "code": "deadline_exceeded"}}
    # Not before the deadline; not long after it (upload, decoding and VAD come first).
    assert DEADLINE_S <= asr_s < DEADLINE_S + 30 and DEADLINE_S <= v1_s < DEADLINE_S + 30
    assert counter(worker, "asr_audio_seconds_total") - audio_before < LONG_S, "most of the work ran"

    # The segments still queued are dropped as the inference thread reaches them, never run:
    # at most the one running when the answers came finishes.
    def drained() -> bool:
        health = worker.health() or {}
        return health.get("queue_depth") == 0 and health.get("batch_running_s") == 0.0
    wait_for(drained, 30, "the cancelled segments to leave the queue", interval=0.1)
    assert counter(worker, SEGMENTS_RUN) - ran_at_answers <= 1

    ran_drained = counter(worker, SEGMENTS_RUN)
    after = post(worker.url, "/asr", card)
    assert after.status_code == 200, after.text
    assert after.json()["segments"] == before["segments"] and after.json()["text"] == before["text"]
    assert counter(worker, SEGMENTS_RUN) - ran_drained == after.json()["stats"]["total_segments"]
