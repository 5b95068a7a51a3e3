"""The Whisper engine on both embedded models, with the shared recordings."""

import logging
import shutil

import librosa
import numpy as np
import opencc
import pytest

from app.batching import Batcher, wait_all
from app.engines import BATCH_ITEMS, DecodeOptions, batch_items, load_engine, whisper_models
from app.engines.pocketsphinx_engine import PocketSphinxEngine
from app.engines.whisper_engine import WhisperEngine
from app.errors import ConfigError
from app.settings import Settings
from tests.speech import ENGLISH, MANDARIN, character_error_rate, read, reference, word_error_rate

pytestmark = pytest.mark.worker


def load(name: str) -> np.ndarray:
    samples, rate = read(name)
    mono = samples.mean(axis=1) if samples.ndim > 1 else samples
    return librosa.resample(mono, orig_sr=rate, target_sr=16000) if rate != 16000 else mono


@pytest.fixture(scope="module")
def base():
    return WhisperEngine.load(whisper_models.resolve("base"), "whisper-base", "cpu", "auto", 2)


@pytest.fixture(scope="module")
def tiny_en():
    return WhisperEngine.load(whisper_models.resolve("tiny.en"), "whisper-tiny.en", "cpu", "auto", 2)


@pytest.fixture(scope="module")
def english(audio_dir):
    return [load(name) for name in ENGLISH], [reference(name) for name in ENGLISH]


@pytest.mark.parametrize("model, bound", [("base", 0.08), ("tiny_en", 0.12)])
def test_english_word_error_rate(request, english, model, bound):
    engine = request.getfixturevalue(model)
    audios, references = english
    hypotheses = [t.text for t in engine.transcribe_batch(audios, DecodeOptions("en"))]
    error_rate = word_error_rate(references, hypotheses)
    print(f"{model} WER on LibriVox + JFK: {error_rate:.3f}")
    assert error_rate <= bound, hypotheses


@pytest.mark.parametrize("language", ["zh", "auto"])
def test_mandarin_is_transcribed_in_simplified_characters(base, audio_dir, language):
    [transcript] = base.transcribe_batch([load(MANDARIN)], DecodeOptions(language))
    assert transcript.language == "zh"
    assert character_error_rate(reference(MANDARIN), transcript.text) <= 0.10, transcript.text
    assert opencc.OpenCC("t2s").convert(transcript.text) == transcript.text


def test_auto_detects_each_clip_of_a_mixed_batch(base, audio_dir):
    jfk, mandarin = load("jfk.flac"), load(MANDARIN)
    results = base.transcribe_batch([jfk, mandarin, jfk], DecodeOptions("auto"))
    assert [t.language for t in results] == ["en", "zh", "en"]
    assert results[0].text == results[2].text and "country" in results[0].text
    assert character_error_rate(reference(MANDARIN), results[1].text) <= 0.10


def test_words_are_timed_in_order_inside_their_piece(base, english):
    [transcript] = base.transcribe_batch([english[0][-1]], DecodeOptions("en"))  # JFK, 11 s
    words = [w for piece in transcript.pieces for w in piece.words]
    assert " ".join(w.word for w in words) == transcript.text
    starts = [w.start for w in words]
    assert starts == sorted(starts) and 0 <= starts[0] and words[-1].end <= 11.1
    for piece in transcript.pieces:
        assert all(piece.start - 0.01 <= w.start <= w.end <= piece.end + 0.01 for w in piece.words)
        assert piece.avg_logprob < 0 and 0 <= piece.no_speech_prob <= 1 and piece.compression_ratio > 0



def test_without_words_the_text_and_pieces_are_the_same_and_untimed(base, english):
    jfk = english[0][-1]
    [timed] = base.transcribe_batch([jfk], DecodeOptions("en"))
    [plain] = base.transcribe_batch([jfk], DecodeOptions("en", words=False))
    assert plain.text == timed.text and "country" in plain.text
    assert [p.text for p in plain.pieces] == [p.text for p in timed.pieces]
    assert all(p.words for p in timed.pieces) and not any(p.words for p in plain.pieces)
    # The pieces keep Whisper's timestamp tokens (the words would have moved their ends to the last word's).
    assert all(0 <= p.start < p.end <= 11.01 for p in plain.pieces)


def test_on_the_cpu_whisper_runs_one_segment_per_call_and_others_batch(base):
    assert batch_items(base) == 1
    assert batch_items(PocketSphinxEngine.load()) == BATCH_ITEMS == 8

def test_the_english_only_model_accepts_english_and_auto_only(tiny_en):
    assert tiny_en.languages == {"auto", "en"}
    base_languages = load_engine(Settings(engine="whisper", model="base")).languages
    assert {"zh", "yue", "ja", "ko", "en", "auto"} <= base_languages


def test_one_batch_is_one_engine_call_and_each_clip_keeps_its_own_text(base, english):
    audios, references = english
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(base, name)

        def transcribe_batch(self, clips, options):
            calls.append(len(clips))
            return base.transcribe_batch(clips, options)

    batcher = Batcher(Counting(), max_items=8, max_seconds=240, wait_s=0.2, queue_limit=64, retries=0,
                      backoff_s=0)
    batcher.start()
    deadline = 10**9
    # One request per clip, as handler threads submit them.
    jobs = [batcher.submit([audio], DecodeOptions("en"), deadline)[0] for audio in audios]
    batched = [outcome.text for outcome in wait_all(jobs, deadline)]
    assert calls == [len(audios)]
    assert word_error_rate(references, batched) <= 0.08
    alone = [base.transcribe_batch([audio], DecodeOptions("en"))[0].text for audio in audios]
    assert batched == alone


def test_auto_serves_embedded_whisper_base_when_funasr_is_missing(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    engine = load_engine(Settings(engine="auto", model=str(tmp_path / "no-such-model")))
    assert (engine.name, engine.model) == ("whisper", "whisper-base")
    assert any("EMBEDDED Whisper" in r.message and "no-such-model" in r.message for r in caplog.records)


def test_a_corrupt_model_file_fails_at_startup_naming_both_hashes(tmp_path):
    good = whisper_models.resolve("tiny.en")
    cache = tmp_path / "cache"
    shutil.copytree(good, cache / good.name)
    with open(cache / good.name / "model.bin", "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\xff" * 16)
    with pytest.raises(ConfigError) as error:
        load_engine(Settings(engine="whisper", model="tiny.en", whisper_cache_dir=str(cache)))
    message = str(error.value)
    assert whisper_models.EMBEDDED["tiny.en"].sha256 in message and "has sha256" in message
    assert "\n" not in message


def test_the_embedded_model_is_assembled_once_and_checked(tmp_path):
    path = whisper_models.resolve("base", str(tmp_path))
    assert whisper_models.file_sha256(path / "model.bin") == whisper_models.EMBEDDED["base"].sha256
    assert "site-packages" not in str(path)
    stamp = (path / "model.bin").stat().st_mtime_ns
    assert whisper_models.resolve("base", str(tmp_path)) == path
    assert (path / "model.bin").stat().st_mtime_ns == stamp  # not written again
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.bin", "tokenizer.json",
                                                      "vocabulary.json"]


@pytest.mark.parametrize("model, reason", [
    ("/nonexistent/whisper", "not a CTranslate2 Whisper model folder"),
    ("huge-v9", "unknown Whisper model"),
])
def test_a_model_that_cannot_be_had_is_a_one_line_config_error(model, reason):
    with pytest.raises(ConfigError, match=reason) as error:
        load_engine(Settings(engine="whisper", model=model))
    assert "\n" not in str(error.value)


def test_a_size_name_loads_from_the_hugging_face_cache_offline(tmp_path):
    # The cache layout huggingface_hub writes, holding real CTranslate2 files
    # (tiny.en's, under the name "tiny": nothing here checks the weights).
    entry = tmp_path / "hub" / "models--Systran--faster-whisper-tiny"
    shutil.copytree(whisper_models.resolve("tiny.en"), entry / "snapshots" / "0123abcd")
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("0123abcd")
    engine = load_engine(Settings(engine="whisper", model="tiny", whisper_cache_dir=str(tmp_path)))
    assert (engine.name, engine.model) == ("whisper", "whisper-tiny")
    with pytest.raises(ConfigError, match="'small' is neither cached nor downloadable"):
        load_engine(Settings(engine="whisper", model="small", whisper_cache_dir=str(tmp_path)))
