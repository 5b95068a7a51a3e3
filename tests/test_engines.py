"""Engine choice and the embedded engine's accuracy on real recordings."""


import jiwer
import pytest
import soundfile

from app.engines import DecodeOptions, load_engine
from app.engines.pocketsphinx_engine import PocketSphinxEngine
from app.errors import ConfigError
from app.settings import Settings

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def pocketsphinx():
    return PocketSphinxEngine.load()


def test_pocketsphinx_word_error_rate_on_librivox(pocketsphinx, audio_dir):
    clips = sorted(audio_dir.glob("sense_and_sensibility_*.wav"))
    assert len(clips) == 3
    audios = [soundfile.read(path, dtype="float32")[0] for path in clips]
    references = [path.with_suffix(".txt").read_text().strip().lower() for path in clips]
    hypotheses = [t.text for t in pocketsphinx.transcribe_batch(audios, DecodeOptions("en"))]
    error_rate = jiwer.wer(references, hypotheses)
    print(f"pocketsphinx WER on the LibriVox clips: {error_rate:.3f}")
    assert error_rate <= 0.45


def test_pocketsphinx_recovers_when_its_decoder_process_dies(pocketsphinx, audio_dir):
    audio = soundfile.read(audio_dir / "cards001.wav", dtype="float32")[0]
    pocketsphinx._process.kill()
    pocketsphinx._process.join()
    with pytest.raises(RuntimeError, match="died"):
        pocketsphinx.transcribe_batch([audio], DecodeOptions("en"))
    assert "clubs" in pocketsphinx.transcribe_batch([audio], DecodeOptions("en"))[0].text


def test_explicit_pocketsphinx_is_served():
    engine = load_engine(Settings(engine="pocketsphinx"))
    assert (engine.name, engine.model, engine.device) == ("pocketsphinx", "pocketsphinx/en-us", "cpu")
    assert engine.languages == {"auto", "en"}


def test_an_explicit_funasr_model_that_cannot_load_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load FunASR model") as error:
        load_engine(Settings(engine="funasr", model=str(tmp_path / "no-such-model")))
    assert "\n" not in str(error.value)
