"""Rendering edge cases (scripts/fleet/render.py, config.py): environment
values holding `%`, quotes, commas and `=` reach the worker exactly as written
(checked with supervisord's own config reader, which expands %(name)s and
strips quotes), values Supervisor cannot carry are refused when the fleet file
is loaded instead of being mangled; [[instance]] env beats [worker.env],
which beats the fleet's own settings; and fractional rate limits render an
Nginx rate, burst and Retry-After that `nginx -t` accepts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import fleet_harness  # noqa: F401 - puts scripts/ on sys.path, for the fleet's modules below
import pytest
from machine import program_envs, require_tool

# isort: split
from fleet import config as fc
from fleet import render
from fleet import state as fs

pytestmark = pytest.mark.unit


def rendered(tmp_path: Path, text: str) -> tuple[dict, dict]:
    config = tmp_path / "fleet.toml"
    config.write_text(text)
    resolved = fc.load(config, tmp_path / "run", gpus=0, cores=2)
    state = fs.read_state(tmp_path / "run", resolved)
    render.render_all(resolved, state)
    return resolved, state


# Values and what must arrive in the worker's environment, byte for byte.
AWKWARD = {
    "ASR_PERCENT": "100%",
    "ASR_FORMAT": "%(here)s and %(program_name)s",  # supervisord would expand these
    "ASR_DOUBLE": "%%",
    "ASR_QUOTED": 'say "hi" now',  # used to lose its quotes
    "ASR_APOSTROPHE": "it's",
    "ASR_JSON": '{"beam": 5, "lang": "en"}',
    "ASR_LIST": "a,b=c d",  # commas and = inside a value
    "ASR_SEMI": "a;b#c",  # ; and # not after a space: no comment
    "ASR_EMPTY": "",
    "ASR_SPACES": "  padded  ",
}


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def test_awkward_env_values_reach_the_worker_unchanged(tmp_path):
    text = "instances = 1\n[worker.env]\n" + "".join(f"{k} = {toml_string(v)}\n" for k, v in AWKWARD.items())
    rendered(tmp_path, text)
    conf = tmp_path / "run" / "supervisord.conf"
    line = next(x for x in conf.read_text().splitlines() if x.startswith("environment=ASR_HOST="))
    # The literal % is doubled in the file; a value with a double quote is single-quoted.
    assert 'ASR_PERCENT="100%%"' in line and 'ASR_FORMAT="%%(here)s and %%(program_name)s"' in line
    assert 'ASR_DOUBLE="%%%%"' in line and "ASR_QUOTED='say \"hi\" now'" in line
    assert 'ASR_APOSTROPHE="it\'s"' in line
    env = program_envs(conf)["asr-8001"]
    assert {k: env[k] for k in AWKWARD} == AWKWARD


@pytest.mark.parametrize("key, value, why", [
    ("ASR_BOTH", "it's \"x\"", "holds both ' and \""),
    ("ASR_EDGE", '"quoted"', "starts or ends with a quote"),
    ("ASR_EDGE", "trailing'", "starts or ends with a quote"),
    ("ASR_COMMENT", "a ;b", "holds ; or # after a space"),
    ("ASR_COMMENT", "a #b", "holds ; or # after a space"),
    ("ASR_LINES", "one\ntwo", "holds a line break"),
    ("ASR BAD", "x", "is not a variable name"),
    ("1ASR", "x", "is not a variable name"),
])
def test_env_values_supervisor_would_mangle_are_refused_on_load(tmp_path, key, value, why):
    for text in (f"[worker.env]\n{toml_string(key)} = {toml_string(value)}\n",
                 f"[[instance]]\nport = 9001\nenv = {{{toml_string(key)} = {toml_string(value)}}}\n"):
        with pytest.raises(fc.FleetError, match="Supervisor cannot pass it on unchanged") as error:
            rendered(tmp_path, text)
        assert why in str(error.value) and key in str(error.value)
        assert not (tmp_path / "run" / "supervisord.conf").exists()


def test_instance_env_beats_worker_env_which_beats_the_fleet_settings(tmp_path):
    text = ('engine = "pocketsphinx"\nmodel = "base"\ninstances = 3\n'
            '[worker]\nmax_upload_mb = 10\n'
            '[worker.env]\nASR_ENGINE = "whisper"\nASR_LANGUAGE = "en"\nASR_MAX_UPLOAD_MB = "5"\n'
            '[[instance]]\nport = 9001\n'
            '[[instance]]\nport = 9002\nenv = {ASR_ENGINE = "funasr", ASR_MODEL = "/models/x"}\n'
            '[[instance]]\nport = 9003\nenv = {ASR_LANGUAGE = "de", ASR_MAX_UPLOAD_MB = "7"}\n')
    rendered(tmp_path, text)
    conf = tmp_path / "run" / "supervisord.conf"
    envs = program_envs(conf)

    def pick(name: str) -> tuple:
        env = envs[name]
        return env["ASR_ENGINE"], env["ASR_MODEL"], env["ASR_LANGUAGE"], env["ASR_MAX_UPLOAD_MB"], env["ASR_PORT"]

    assert pick("asr-9001") == ("whisper", "base", "en", "5", "9001")
    assert pick("asr-9002") == ("funasr", "/models/x", "en", "5", "9002")
    assert pick("asr-9003") == ("whisper", "base", "de", "7", "9003")
    # One assignment per variable: the winner replaces, never repeats.
    for line in (x for x in conf.read_text().splitlines() if x.startswith("environment=ASR_HOST=")):
        for key in ("ASR_ENGINE", "ASR_MODEL", "ASR_LANGUAGE", "ASR_MAX_UPLOAD_MB", "ASR_PORT"):
            assert line.count(f",{key}=") == 1, line


def nginx_test(run_dir: Path) -> subprocess.CompletedProcess:
    nginx = require_tool("nginx")
    return subprocess.run([nginx, "-t", "-p", f"{run_dir}/", "-c", str(run_dir / "nginx.conf"),
                           "-e", str(run_dir / "logs" / "nginx-error.log")], capture_output=True, text=True,
                          check=False)


@pytest.mark.parametrize("per_s, rate, retry", [
    (0.5, "30r/m", 2), (0.25, "15r/m", 4), (2.5, "150r/m", 1), (1 / 60, "1r/m", 60), (3, "3r/s", 1),
    (1.0, "1r/s", 1), (0.7, "42r/m", 2),
])
def test_rate_limits_render_what_nginx_accepts(tmp_path, per_s, rate, retry):
    resolved, state = rendered(tmp_path, f"instances = 1\n[nginx]\nrate_limit_per_s = {per_s!r}\n"
                                         "rate_limit_burst = 7\n")
    nginx = (tmp_path / "run" / "nginx.conf").read_text()
    assert f"limit_req_zone $binary_remote_addr zone=asr_fleet_rate:10m rate={rate};" in nginx
    assert "limit_req zone=asr_fleet_rate burst=7 nodelay;" in nginx and "limit_req_status 429;" in nginx
    limited = nginx.split("location @rate_limited")[1].split("}")[0]
    assert f"add_header Retry-After {retry} always;" in limited
    assert f"retry after {retry} s" in limited
    require_tool("nginx")  # the rendered text is checked above; `nginx -t` needs nginx (under CI, a failure)
    test = nginx_test(tmp_path / "run")
    assert test.returncode == 0, test.stderr
    render.check_nginx(resolved, state)  # the check `make reload` runs first


def test_no_rate_limit_renders_no_limit_req(tmp_path):
    rendered(tmp_path, "instances = 1\n[nginx]\nrate_limit_per_s = 0\n")
    nginx = (tmp_path / "run" / "nginx.conf").read_text()
    assert "limit_req" not in nginx and "@rate_limited" not in nginx and "error_page 429" not in nginx


@pytest.mark.parametrize("per_s", [0.001, 0.016, -1, "true"])
def test_a_rate_nginx_cannot_express_is_refused(tmp_path, per_s):
    # Nginx counts at most per minute: 0.001 would silently become 1r/m, 60 times the rate asked for.
    with pytest.raises(fc.FleetError, match="nginx.rate_limit_per_s"):
        rendered(tmp_path, f"[nginx]\nrate_limit_per_s = {per_s}\n")


@pytest.mark.parametrize("folder", ["run 1", "100%run"])
def test_a_run_folder_supervisor_cannot_name_is_refused_on_load(tmp_path, folder):
    (tmp_path / "fleet.toml").write_text("instances = 1\n")
    with pytest.raises(fc.FleetError, match="cannot run from a path with '%' or spaces"):
        fc.load(tmp_path / "fleet.toml", tmp_path / folder, gpus=0)
