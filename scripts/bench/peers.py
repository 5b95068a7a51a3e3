"""Our fleet against two outside servers on the same model, through each one's
OpenAI-compatible `POST /v1/audio/transcriptions`.

1. FunASR's own server (`python -m funasr.bin.server`, shipped in the funasr
   wheel) against a fleet serving the same random-weight SenseVoice model.
2. faster-whisper-server 0.0.3 from PyPI (andyjjrt's, not speaches) against a
   fleet serving Whisper base from the same CTranslate2 folder, int8.

Our side is a fleet of 2 instances (least_conn, one core each); the peer gets
the same 2 cores in its best configuration from its own flags. Each round
sends the same fixed work to each side, at 8 users and at 1, in alternating
order (bench.http.alternate). Every answer is kept: Whisper's must match the
references (low WER), random SenseVoice's must all be 200s with a text.
A 503 or 429 is retried after its Retry-After, as scripts/transcribe.py and
OpenAI's client do; the latency is the whole wait, retries included.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import traceback
from pathlib import Path

import requests

from loadtest.stats import latency_stats

from . import peer_servers, stats
from .env import DEFAULT_AUDIO, CpuMeter, audio_set, engine_settings
from .http import _strip, alternate, pooled
from .inprocess import compact
from .lab import Fleet

FILES = ["jfk.flac", "sense_and_sensibility_01_austen_64kb-0870.wav",
         "sense_and_sensibility_01_austen_64kb-0880.wav", "sense_and_sensibility_01_austen_64kb-0890.wav"]
ENDPOINT = "/v1/audio/transcriptions"
# The same form to every server: OpenAI's model alias (each maps it to its one
# model), English (no language detection pass), plain JSON.
FORM = {"model": "whisper-1", "language": "en", "response_format": "json"}
CONCURRENCIES = (8, 1)
GOAL_USERS = 8
GOALS = {"throughput": 1.5, "p95": 0.7}  # at GOAL_USERS: ours/peer at least, ours/peer at most
MAX_WER = 0.15  # Whisper base on these clips: above this the answers are not the recordings' text
OURS = {"instances": 2, "threads": 1}  # ASR_CPU_THREADS per instance: one core each
# The peer's processes x threads use the same 2 cores. Requests per user and round, (full, --quick):
# at 1 user a multiple of the 4 files, so each is sent as often. Sized so that `--only peers` at
# 5 rounds takes about 8 minutes on 2 quiet cores (about 80 s a round, 1 minute of set-up),
# leaving room under 12 for rounds measured again while other tenants were busy.
PEERS = {
    "funasr_server": {"label": "FunASR server", "engine": "funasr-full", "threads": 2, "workers": 1,
                      "check": "status", "per_user": {8: (5, 1), 1: (8, 4)}},
    "faster_whisper_server": {"label": "faster-whisper-server", "engine": "whisper-base", "threads": 1,
                              "workers": 2, "check": "wer", "per_user": {8: (4, 1), 1: (8, 4)}},
}


def setup_name(side: str, users: int) -> str:
    """A setup's name in bench.http.alternate's rounds (and the stored runs)."""
    return f"{side}, {users} user{'s' if users > 1 else ''}"


def _retry_after(value: str | None) -> float:
    """Seconds to wait: Retry-After in seconds; 1 for a missing or HTTP-date value."""
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0


def _post(session: requests.Session, url: str, name: str, data: bytes, deadline: float) -> tuple:
    """(text or None, retries, error detail): one request, retried while refused for load."""
    retries = 0
    while True:
        try:
            response = session.post(url + ENDPOINT, files={"file": (name, data, "application/octet-stream")},
                                    data=FORM, timeout=600)
        except requests.RequestException as error:
            return None, retries, f"{type(error).__name__}: {error}"[:200]
        if response.status_code in (429, 503) and time.monotonic() < deadline:
            retries += 1
            time.sleep(_retry_after(response.headers.get("Retry-After")))
            continue
        try:
            text = response.json().get("text") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            text = None
        if not isinstance(text, str):
            return None, retries, f"HTTP {response.status_code}: {response.text.strip()[:200]}"
        return text, retries, None


def send_all(url: str, files, concurrency: int, per_user: int) -> dict:
    """Like run_load with `requests=per_user` (user u sends files u, u+1, ...),
    keeping every answer's text."""
    latencies, texts, errors, retries = [], [], [], [0]
    audio = [0.0]
    lock = threading.Lock()
    deadline = time.monotonic() + 1200

    def user(u: int) -> None:
        with requests.Session() as session:
            for k in range(per_user):
                clip = files[(u + k) % len(files)]
                started = time.monotonic()
                text, tries, error = _post(session, url, clip.name, clip.data, deadline)
                with lock:
                    retries[0] += tries
                    if error:
                        errors.append(error)
                        continue
                    latencies.append((clip.name, time.monotonic() - started))
                    texts.append((clip.name, text))
                    audio[0] += clip.seconds

    meter, t0 = CpuMeter(), time.monotonic()
    threads = [threading.Thread(target=user, args=(u,), daemon=True) for u in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    row = compact(sent=concurrency * per_user, ok=len(latencies), elapsed=time.monotonic() - t0, audio=audio[0],
                  latency_ms=latency_stats([lat for _, lat in latencies]), cpu=meter.read(),
                  errors=errors[:3], cpu_by_kind=meter.by_kind())
    row.update(retries=retries[0], _latencies=latencies, _texts=texts)
    return row


def ratios(per_round: list[tuple], pooled_pair: tuple) -> dict | None:
    """ours/peer, pooled and per round, as a bench.stats band: one that straddles 1.0, or
    a single round, is no measurable difference, whatever the pooled figure says. None
    where a side answered nothing (no throughput or latency to compare)."""
    ours, peer = pooled_pair
    values = stats.paired([a for a, _ in per_round], [b for _, b in per_round], lambda a, b: a / b)
    result = stats.band(values, stats.RATIO, digits=3)
    if result is None or not ours or not peer:
        return None
    return {"pooled": round(ours / peer, 3), **result}


def _words(text: str) -> str:
    """Lower case, no punctuation, "Mr." spelled out as the references do."""
    text = re.sub(r"\bmr\.?(?=\s)", "mister", text.lower())
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.replace("-", " ")).split())


def check_answers(texts: list[tuple[str, str]], kind: str) -> dict:
    """What the answers were: counts, and for Whisper the word error rate against the
    references beside the recordings (pooled over every answer, and JFK's alone)."""
    out = {"answers": len(texts), "empty": sum(not t.strip() for _, t in texts)}
    if kind == "wer":
        import jiwer

        refs = {n: (DEFAULT_AUDIO / n).with_suffix(".txt").read_text() for n in {n for n, _ in texts}}
        for key, pick in (("wer", lambda n: True), ("jfk_wer", lambda n: n == "jfk.flac")):
            pairs = [(_words(refs[n]), _words(t) or "(empty)") for n, t in texts if pick(n)]
            out[key] = round(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]), 4) if pairs else None
        out["real_text"] = all(out[key] is not None and out[key] <= MAX_WER for key in ("wer", "jfk_wer"))
    return out


def _start(lab, key: str, spec: dict) -> tuple:
    """The peer server in its configuration; its command line and config file, as run."""
    config_text = ""
    if key == "funasr_server":
        model = peer_servers.funasr_model(Path(engine_settings(spec["engine"])["model"]), spec["threads"])
        command = [str(peer_servers.FUNASR_SERVER.python), "-m", "funasr.bin.server", "--device", "cpu",
                   "--model-path", str(model)]
    else:
        from app.engines import whisper_models

        config = peer_servers.faster_whisper_config(lab.work, whisper_models.resolve("base"), spec["threads"])
        config_text = config.read_text()
        command = [str(peer_servers.FASTER_WHISPER_SERVER.python), "-m", "faster_whisper_server",
                   "--config", str(config), "--workers", str(spec["workers"])]
    server = peer_servers.start(lab, peer_servers.PeerServer(lab.work, key, command), timeout=600)
    return server, " ".join(server.command).replace(str(peer_servers.REPO) + "/", ""), config_text


def measure(lab, opts, key: str, spec: dict, files) -> dict:
    venv = peer_servers.FUNASR_SERVER if key == "funasr_server" else peer_servers.FASTER_WHISPER_SERVER
    versions = peer_servers.ensure_venv(venv)
    # Fleet's own default device, the CPU, even where the Lab would place instances on GPUs:
    # the peers run on the CPU.
    size = OURS["instances"]
    fleet = Fleet(lab.work, f"peers-{key}", pool=size, size=size, balancing="least_conn",
                  env={"ASR_CPU_THREADS": str(OURS["threads"])}, **engine_settings(spec["engine"]))
    lab.things.append(fleet)
    server = None
    try:
        fleet.start()
        server, command, config_text = _start(lab, key, spec)
        sides = {"ours": fleet.url, "peer": server.url}
        for side, url in sides.items():  # warm every instance and worker: first requests load lazily
            warm = send_all(url, files, 4, 2)
            if warm["ok"] < warm["sent"]:
                raise RuntimeError(f"{side} ({url}) failed its warm-up: {warm['errors']}")
        per_user = {c: spec["per_user"][c][1 if opts.quick else 0] for c in CONCURRENCIES}
        runs = alternate({setup_name(side, c): (lambda url=url, c=c: send_all(url, files, c, per_user[c]))
                          for c in CONCURRENCIES for side, url in sides.items()}, opts.rounds)
    finally:
        # A failed peer must not leave its servers on the cores the next one is measured on.
        if server is not None:
            lab.release(server)
        lab.release(fleet)
    table = {}
    for c in CONCURRENCIES:
        rows = {side: runs[setup_name(side, c)] for side in sides}
        x = {side: pooled(r) for side, r in rows.items()}
        for side, r in rows.items():
            x[side].update(retries=sum(row["retries"] for row in r), per_round_p95_ms=[row["p95_ms"] for row in r],
                           # Our processes' cores (load generator included, the same for both sides).
                           cores_busy=round(sum(row["cpu_s"] for row in r) / x[side]["elapsed_s"], 2))
        pairs = list(zip(rows["ours"], rows["peer"]))
        for figure, field in (("throughput", "audio_s_per_s"), ("p95", "p95_ms")):
            x[figure] = ratios([(a[field], b[field]) for a, b in pairs], (x["ours"][field], x["peer"][field]))
        x["requests_per_round"] = c * per_user[c]
        table[str(c)] = x
    answers = {side: check_answers([t for name, rows in runs.items() if name.startswith(side)
                                    for row in rows for t in row["_texts"]], spec["check"])
               for side in sides}
    return {"label": spec["label"], "engine": spec["engine"], "threads": spec["threads"],
            "workers": spec["workers"], "versions": versions, "command": command, "config_text": config_text,
            "table": table, "answers": answers, "check": spec["check"], "ours": OURS, "fleet_toml": fleet.toml,
            "runs": _strip(runs)}


def peers(lab, opts) -> dict:
    """Each peer in turn; one that cannot be set up or started is reported, the other still runs."""
    files = audio_set(FILES)
    out = {"name": "peers", "files": [f"{f.name} ({f.seconds:.1f} s)" for f in files], "goals": GOALS,
           "goal_users": GOAL_USERS, "max_wer": MAX_WER, "peers": {}}
    for key, spec in PEERS.items():
        try:
            out["peers"][key] = measure(lab, opts, key, spec, files)
        except Exception as error:  # noqa: BLE001 - one peer's failure must not lose the other's figures
            traceback.print_exc()
            out["peers"][key] = {"label": spec["label"], "skipped": f"{type(error).__name__}: {error}"[:600]}
            print(f"bench:   {spec['label']} not measured", file=sys.stderr, flush=True)
    if all("skipped" in x for x in out["peers"].values()):
        raise RuntimeError("; ".join(f"{x['label']}: {x['skipped']}" for x in out["peers"].values()))
    return out
