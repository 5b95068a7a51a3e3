"""The FunASR engine against a tiny random-weight SenseVoice model, through real funasr."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from machine import require_recordings
from speech import LIBRIVOX

from app.engines import DecodeOptions
from app.engines.base import Transcript
from app.engines.funasr_engine import (
    SENSEVOICE_LANGUAGES,
    FunASREngine,
    model_is_available,
    parse_rich_text,
    pick_device,
    prefetch,
    timed_words,
)

pytestmark = pytest.mark.worker



@pytest.fixture(scope="session")
def engine(tiny_model_dir) -> FunASREngine:
    return FunASREngine.load(str(tiny_model_dir), "cpu")


@pytest.fixture(scope="session")
def librivox() -> list[np.ndarray]:
    audio_dir = require_recordings(*LIBRIVOX)
    clips = []
    for name in LIBRIVOX:
        audio, rate = sf.read(audio_dir / name, dtype="float32")
        assert rate == 16_000 and audio.ndim == 1
        clips.append(audio)
    return clips


def test_loads_through_real_automodel_with_the_saved_weights(engine, tiny_model_dir):
    from funasr import AutoModel
    from funasr.models.sense_voice.model import SenseVoiceSmall

    assert isinstance(engine._automodel, AutoModel)
    assert isinstance(engine._automodel.model, SenseVoiceSmall)
    assert (engine.name, engine.model, engine.device) == ("funasr", str(tiny_model_dir), "cpu")
    assert engine.languages == SENSEVOICE_LANGUAGES
    saved = torch.load(tiny_model_dir / "model.pt", map_location="cpu")
    loaded = engine._automodel.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)


def test_tokenizer_keeps_sensevoice_tags_whole(make_tiny_model, tiny_model_dir):
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(tiny_model_dir / make_tiny_model.TOKENIZER_FILE))
    for tag in ("<|en|>", "<|zh|>", "<|NEUTRAL|>", "<|HAPPY|>", "<|Speech|>", "<|BGM|>",
                "<|woitn|>", "<|withitn|>"):
        assert tag in processor.encode(tag, out_type=str)
    assert processor.decode(processor.encode("<|en|><|HAPPY|>hello")) == "<|en|><|HAPPY|>hello"


def test_full_size_config_is_sensevoice_small(make_tiny_model):
    encoder = make_tiny_model.build_config(full_size=True)["encoder_conf"]
    assert (encoder["output_size"], encoder["num_blocks"], encoder["tp_blocks"],
            encoder["linear_units"], encoder["attention_heads"]) == (512, 50, 20, 2048, 4)
    assert make_tiny_model.FULL_VOCAB_SIZE == 25055


def test_transcribes_librivox_clips(engine, librivox):
    results = engine.transcribe_batch(librivox, DecodeOptions("auto"))
    assert len(results) == 3
    for result in results:
        assert isinstance(result, Transcript)
        assert "<|" not in result.text and "|>" not in result.text
        assert result.language in SENSEVOICE_LANGUAGES | {None}


def test_batch_is_one_forward_pass_in_input_order(engine, librivox):
    batch_sizes = []
    hook = engine._automodel.model.encoder.register_forward_hook(
        lambda module, inputs, output: batch_sizes.append(inputs[0].shape[0]))
    try:
        forward = engine.transcribe_batch(librivox, DecodeOptions("en"))
        backward = engine.transcribe_batch(librivox[::-1], DecodeOptions("en"))
    finally:
        hook.remove()
    assert batch_sizes == [3, 3]
    assert forward == backward[::-1]
    assert len({result.text for result in forward}) > 1  # the order check means something


def test_empty_and_very_short_clips_do_not_fail_the_batch(engine, librivox):
    clips = [np.zeros(0, np.float32), np.zeros(100, np.float32), librivox[0]]
    results = engine.transcribe_batch(clips, DecodeOptions("auto"))
    assert len(results) == 3
    assert results[0] == Transcript(text="")


def test_rejects_unknown_language(engine, librivox):
    with pytest.raises(ValueError, match="fr"):
        engine.transcribe_batch(librivox[:1], DecodeOptions("fr"))


@pytest.mark.parametrize(("raw", "expected"), [
    ("<|en|><|HAPPY|><|Speech|><|withitn|>Hello.", Transcript("Hello.", "en", "happy", "speech")),
    ("<|zh|><|NEUTRAL|><|BGM|><|woitn|>你好世界", Transcript("你好世界", "zh", "neutral", "bgm")),
    ("<|nospeech|><|EMO_UNKNOWN|><|Event_UNK|><|woitn|>", Transcript("", None, None, None)),
    ("<|ja|><|Speech|><|withitn|>  two  <|Laughter|>words ", Transcript("two words", "ja", None, "speech")),
    ("plain text", Transcript("plain text")),
])
def test_parse_rich_text(raw, expected):
    assert parse_rich_text(raw) == expected


def test_pick_device():
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert pick_device("0") == expected
    assert pick_device(None) == "cpu"
    assert pick_device("") == "cpu"
    assert pick_device("-1") == "cpu"


def test_model_is_available_for_directories(tiny_model_dir, tmp_path):
    missing = tmp_path / "no-such-model"
    available, reason = model_is_available(str(missing))
    assert not available and str(missing) in reason and "\n" not in reason
    available, reason = model_is_available(str(tmp_path))
    assert not available and "config.yaml" in reason
    assert model_is_available(str(tiny_model_dir))[0] is True


def test_hub_id_found_in_cache_loads_offline(tiny_model_dir, tmp_path):
    cache = tmp_path / "modelscope"
    shutil.copytree(tiny_model_dir, cache / "models" / "iic" / "SenseVoiceSmall")
    available, reason = model_is_available("iic/SenseVoiceSmall", cache_dir=str(cache))
    assert available, reason
    assert prefetch("iic/SenseVoiceSmall", str(cache)) == str(cache / "models" / "iic" / "SenseVoiceSmall")
    engine = FunASREngine.load("iic/SenseVoiceSmall", "cpu", cache_dir=str(cache))
    assert engine.model == "iic/SenseVoiceSmall" and engine.languages == SENSEVOICE_LANGUAGES


def test_uncached_hub_id_answers_within_the_timeout(tmp_path):
    started = time.monotonic()
    available, reason = model_is_available("iic/no-such-model-xyz", cache_dir=str(tmp_path))
    assert time.monotonic() - started < 6
    assert not available and reason and "\n" not in reason


def test_loading_a_missing_directory_fails_fast_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        FunASREngine.load(str(missing), "cpu")
    assert time.monotonic() - started < 5


def test_sensevoice_times_its_words_inside_the_clip(engine, librivox):
    results = engine.transcribe_batch(librivox, DecodeOptions(language="en"))
    assert engine.word_timestamps
    for clip, result in zip(librivox, results):
        [piece] = result.pieces
        starts = [word.start for word in piece.words]
        assert piece.text == result.text and starts == sorted(starts)
        assert all(0 <= word.start <= word.end <= len(clip) / 16_000 for word in piece.words)
        assert (piece.start, piece.end) == (piece.words[0].start, piece.words[-1].end)
        # Random weights: the words are noise, but each is one of the text's.
        assert all(word.word in result.text for word in piece.words), (piece.words, result.text)



def test_without_words_the_text_is_the_same_and_untimed(engine, librivox):
    timed = engine.transcribe_batch(librivox, DecodeOptions(language="en"))
    plain = engine.transcribe_batch(librivox, DecodeOptions(language="en", words=False))
    assert [t.text for t in plain] == [t.text for t in timed] and all(t.text for t in plain)
    assert all(t.pieces for t in timed) and not any(t.pieces for t in plain)

@pytest.mark.parametrize("tokens, spans, expected", [
    (["Hello", ",", "world", "."], [[0, 300], [300, 330], [400, 900], [900, 930]],
     [(0.0, 0.33, "Hello,"), (0.4, 0.93, "world.")]),
    (["<|en|>", "你", "好", "。"], [[0, 10], [60, 180], [180, 300], [300, 330]],
     [(0.06, 0.18, "你"), (0.18, 0.33, "好。")]),
    ([], [], []),
])
def test_timed_words_join_punctuation_to_the_word_before(tokens, spans, expected):
    assert [(w.start, w.end, w.word) for w in timed_words(tokens, spans)] == expected
