"""stream=true through a real Gunicorn worker (Whisper tiny.en, one window
per model call so windows finish one by one): the official openai client
reads the events unchanged, they arrive as windows finish, the streamed
text equals the non-streamed one, they pass Nginx as they come and a long
stream outlives its read timeout, and a client that leaves stops the work
on its request."""

import json
import os
import subprocess
import time

import numpy as np
import openai
import pytest
import requests
import soundfile
from machine import free_ports, require_tool, wait_for

from app import audio

pytestmark = pytest.mark.worker

CLIPS = ["jfk.flac", "sense_and_sensibility_01_austen_64kb-0870.wav",
         "sense_and_sensibility_01_austen_64kb-0880.wav", "sense_and_sensibility_01_austen_64kb-0890.wav"]


@pytest.fixture(scope="module")
def worker(module_worker, audio_dir):
    return module_worker(ASR_ENGINE="whisper", ASR_MODEL="tiny.en", ASR_INSTANCE_NAME="openai-stream",
                         ASR_BATCH_MAX_ITEMS="1", ASR_STREAM_KEEPALIVE_S="0.1")


@pytest.fixture(scope="module")
def reading(tmp_path_factory, audio_dir):
    """Returns a WAV of the English clips `times` over with 1 s pauses: several 30 s windows."""
    def make(times: int):
        pause = np.zeros(16_000, dtype=np.float32)
        parts = []
        for _ in range(times):
            for name in CLIPS:
                samples = audio.decode((audio_dir / name).read_bytes(), max_seconds=60, ffmpeg_timeout=30)
                parts += [samples, pause]
        path = tmp_path_factory.mktemp("reading") / f"reading-{times}.wav"
        soundfile.write(path, np.concatenate(parts), 16_000)
        return path
    return make


@pytest.fixture()
def client(worker):
    return openai.OpenAI(base_url=worker.url + "/v1", api_key="unused", max_retries=0)


def stream(client, path) -> list[tuple[float, object]]:
    started = time.monotonic()
    with open(path, "rb") as handle:
        events = client.audio.transcriptions.create(model="whisper-1", file=handle, stream=True)
        return [(time.monotonic() - started, event) for event in events]


def test_the_openai_client_streams_deltas_then_done_with_usage(client, audio_dir):
    events = stream(client, audio_dir / "jfk.flac")
    kinds = [event.type for _, event in events]
    assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}
    done = events[-1][1]
    assert done.text == "".join(event.delta for _, event in events[:-1])
    assert done.text.startswith("And so, my fellow Americans") and done.usage.seconds == pytest.approx(11.0)


def test_windows_arrive_as_they_finish_and_equal_the_plain_answer(client, reading):
    path = reading(3)
    events = stream(client, path)
    deltas = [(at, event.delta) for at, event in events if event.type == "transcript.text.delta"]
    started = time.monotonic()
    with open(path, "rb") as handle:
        plain = client.audio.transcriptions.create(model="whisper-1", file=handle)
    whole = time.monotonic() - started
    print(f"stream of {len(deltas)} windows: first event at {deltas[0][0]:.2f} s, done at {events[-1][0]:.2f} s; "
          f"the same request unstreamed: {whole:.2f} s")
    assert len(deltas) >= 3
    assert events[-1][1].text == "".join(delta for _, delta in deltas) == plain.text
    # One window per model call: the first is out well before the last.
    assert deltas[0][0] < deltas[-1][0] - 0.5 and deltas[0][0] < whole / 2


def test_the_stream_is_marked_unbuffered_and_errors_come_before_it(worker, audio_dir):
    with open(audio_dir / "jfk.flac", "rb") as handle:
        response = requests.post(worker.url + "/v1/audio/transcriptions", files={"file": handle},
                                 data={"stream": "true", "response_format": "text"}, timeout=60)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no" and response.headers["Cache-Control"] == "no-cache"
    with open(audio_dir / "edge" / "null.wav", "rb") as handle:
        bad = requests.post(worker.url + "/v1/audio/transcriptions", files={"file": handle},
                            data={"stream": "true"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("no audio samples")


def health(worker) -> dict:
    return requests.get(worker.url + "/health", timeout=5).json()


def test_a_client_that_leaves_stops_the_work_on_its_request(worker, reading):
    path = reading(6)  # about 180 s: seven windows, one model call each
    before = health(worker)["batches_done"]
    with open(path, "rb") as handle:
        response = requests.post(worker.url + "/v1/audio/transcriptions", files={"file": handle},
                                 data={"stream": "true"}, stream=True, timeout=120)
    lines = response.iter_lines(decode_unicode=True)
    first = next(line for line in lines if line.startswith("data:"))
    assert json.loads(first[5:])["type"] == "transcript.text.delta"
    assert health(worker)["admitted"] == 1  # the stream holds its admission slot
    response.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = health(worker)
        if state["queue_depth"] == 0 and state["admitted"] == 0 and state["batch_running_s"] == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the worker kept working for a client that left: {state}")
    ran = health(worker)["batches_done"] - before
    print(f"client left after the first window: {ran} of 7 windows ran")
    assert ran <= 4
    assert "Traceback" not in worker.log()


NGINX_CONF = """
daemon off;
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_max_body_size 100m;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            # As the fleet's front (deploy/nginx/asr-fleet.conf.j2): buffering
            # on by default.
            proxy_pass http://127.0.0.1:{worker_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 5s;
        }}
    }}
}}
"""


@pytest.fixture()
def nginx(worker, tmp_path):
    binary = require_tool("nginx")
    port = free_ports()[0]
    conf = tmp_path / "nginx.conf"
    # As root, Nginx's worker would run as nobody and could not write its temp files here.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(user=user, dir=tmp_path, port=port, worker_port=worker.port))
    with open(tmp_path / "nginx.out", "wb") as output:
        process = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp_path)], stdout=output,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        try:
            return requests.get(url + "/health", timeout=5).ok
        except requests.RequestException:
            return False
    wait_for(listening, 30, "Nginx to answer", interval=0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_through_nginx_events_and_keep_alives_arrive_as_they_are_sent(nginx, reading):
    path = reading(3)
    with open(path, "rb") as handle:
        response = requests.post(nginx + "/v1/audio/transcriptions", files={"file": handle},
                                 data={"stream": "true"}, stream=True, timeout=120)
    started, lines = time.monotonic(), []
    for line in response.iter_lines(decode_unicode=True):
        if line:
            lines.append((time.monotonic() - started, line))
    deltas = [at for at, line in lines if '"transcript.text.delta"' in line]
    keep_alives = [at for at, line in lines if line.startswith(": keep-alive")]
    print(f"through Nginx: first event at {deltas[0]:.2f} s, done at {lines[-1][0]:.2f} s, "
          f"{len(keep_alives)} keep-alive comments")
    assert '"transcript.text.done"' in lines[-1][1] and len(deltas) >= 3
    # The worker writes a comment every 0.1 s while a window is recognised:
    # Nginx passes them on, so its read timeout never fires on a long stream.
    assert len(keep_alives) >= 2 and deltas[0] < deltas[-1]
    client = openai.OpenAI(base_url=nginx + "/v1", api_key="unused", max_retries=0)
    with open(path, "rb") as handle:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=handle, stream=True))
    assert events[-1].text == "".join(json.loads(line[5:])["delta"] for _, line in lines if "delta" in line)
