import dataclasses

import pytest

from app.errors import ConfigError
from app.settings import Settings

pytestmark = pytest.mark.unit


def test_defaults_serve_one_cpu_worker_on_loopback():
    settings = Settings.from_env({})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8001
    assert settings.instance_name == "asr-8001"
    assert settings.engine == "auto"
    assert settings.model == "iic/SenseVoiceSmall" and settings.fallback_model == "base"
    assert settings.compute_type == "auto" and settings.cpu_threads == 0
    assert settings.max_upload_bytes == 100 * 1024 * 1024
    assert settings.max_audio_seconds == 7200
    assert not settings.uses_gpu


def test_environment_overrides_every_named_knob():
    settings = Settings.from_env({
        "ASR_HOST": "0.0.0.0", "ASR_PORT": "9100", "ASR_INSTANCE_NAME": "gpu-a",
        "ASR_ENGINE": "PocketSphinx", "ASR_MODEL": "/models/x", "ASR_MAX_UPLOAD_MB": "1.5",
        "ASR_BATCH_MAX_ITEMS": "4", "ASR_BATCH_WAIT_MS": "0", "CUDA_VISIBLE_DEVICES": "1",
        "ASR_FALLBACK_MODEL": "tiny.en", "ASR_COMPUTE_TYPE": "Float16", "ASR_CPU_THREADS": "3",
        "ASR_WHISPER_CACHE": "/cache/w",
    })
    assert (settings.fallback_model, settings.compute_type, settings.cpu_threads) == ("tiny.en", "float16", 3)
    assert settings.whisper_cache_dir == "/cache/w"
    assert (settings.host, settings.port, settings.instance_name) == ("0.0.0.0", 9100, "gpu-a")
    assert settings.engine == "pocketsphinx"
    assert settings.max_upload_bytes == int(1.5 * 1024 * 1024)
    assert settings.batch_max_items == 4 and settings.batch_wait_ms == 0
    assert settings.uses_gpu



@pytest.mark.parametrize("value", [None, "", "auto", " Auto "])
def test_batch_size_left_to_the_engine_unless_set(value):
    env = {} if value is None else {"ASR_BATCH_MAX_ITEMS": value}
    assert Settings.from_env(env).batch_max_items is None

@pytest.mark.parametrize("visible", ["", "-1", "none"])
def test_no_gpu_when_cuda_visible_devices_hides_them(visible):
    assert not Settings(cuda_visible_devices=visible).uses_gpu


@pytest.mark.parametrize("env, fragment", [
    ({"ASR_ENGINE": "kaldi"}, "ASR_ENGINE must be one of"),
    ({"ASR_COMPUTE_TYPE": "int3"}, "ASR_COMPUTE_TYPE must be one of"),
    ({"ASR_CPU_THREADS": "-1"}, "ASR_CPU_THREADS must not be negative"),
    ({"ASR_PORT": "http"}, "ASR_PORT='http' is not a valid int"),
    ({"ASR_PORT": "70000"}, "ASR_PORT must be 1-65535"),
    ({"ASR_BATCH_MAX_ITEMS": "0"}, "ASR_BATCH_MAX_ITEMS must be positive"),
    ({"ASR_MAX_UPLOAD_MB": "lots"}, "ASR_MAX_UPLOAD_MB='lots' is not a number"),
    ({"ASR_MAX_SEGMENT_SECONDS": "500"}, "must not exceed ASR_BATCH_MAX_SECONDS"),
])
def test_impossible_values_fail_with_a_one_line_reason(env, fragment):
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1


@pytest.mark.parametrize("engine, model", [("whisper", "base"), ("funasr", "iic/SenseVoiceSmall"),
                                           ("pocketsphinx", "pocketsphinx/en-us")])
def test_an_unset_model_is_the_engines_default(engine, model):
    assert Settings.from_env({"ASR_ENGINE": engine}).model == model
