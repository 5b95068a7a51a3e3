"""Sections 1 and 3 to 6 of docs/benchmarks.md: stack overhead, batching,
balancing, engine speed and Whisper against faster-whisper, each rendered
from its benchmark's stored results (bench/doc.py puts them in order)."""

from __future__ import annotations

from . import http as http_bench
from . import models
from .markdown import details, number, signed_percent, table
from .stats import GAIN, NO_DIFFERENCE, RATIO, headline, measurable, percent, reason, times


def _kinds(http: dict, local: dict) -> str:
    a, b = http.get("cpu_per_audio_s_by_kind", {}), local.get("cpu_per_audio_s_by_kind", {})
    kinds = list(a) + [k for k in b if k not in a]
    rows = [[k, number(a.get(k), 4), number(b.get(k), 4)] for k in kinds]
    return table(["process", "fleet (HTTP)", "in-process"], rows)


def round_figures(x: dict) -> str:
    return ", ".join(map(str, x["per_round"]))


def cost(value: float) -> str:
    return f"{value * 100:.1f}%"


def with_bands(r: dict, bands) -> dict:
    """The result with its per-round bands: those it stored, else worked out from its stored rounds
    (figures stored before the bands were kept); none where it stored no rounds."""
    return {**bands(r), **r} if "runs" in r else r


def table_bands(r: dict, bands, key: str) -> dict:
    """Per table row, the band the row stored under `key`, else one worked out from the stored rounds."""
    worked_out = bands(r) if "runs" in r else {}
    return {name: x.get(key) or worked_out.get(name) for name, x in r["table"].items()}


def band_cell(b: dict | None, fmt, null: float) -> str:
    """A table cell with the rounds' min / median / max, and the verdict when they straddle `null`."""
    if b is None:
        return "n/a"
    text = f"{fmt(b['min'])} / {fmt(b['median'])} / {fmt(b['max'])}"
    return text if measurable(b, null) else f"{text} ({NO_DIFFERENCE})"


def overhead(r: dict) -> str:
    http, local = r["http"], r["in_process"]
    setup = (f"Throughput through Nginx + Gunicorn + Flask (a one-instance fleet started by "
             f"`scripts/fleet.py` with its own run folder and ports) against the same "
             f"`app.service.Transcriber` pipeline (decode, VAD, batcher, engine: {r['engine']}) driven by "
             f"{r['concurrency']} threads in the "
             f"benchmark process. Same audio, same concurrency, each user sends {r['per_user']} recordings "
             f"of the mixed set ({len(r['files'])} files: card names, LibriVox sentences, the 44.1 kHz "
             f"stereo JFK FLAC). Equivalent load: `scripts/loadtest.py --url <fleet> --files ../shared/audio "
             f"-c {r['concurrency']} -n {r['per_user']}`.\n")
    rows = [[name, number(x["audio_s_per_s"], 3), number(x["req_per_s"], 3), number(x["p50_ms"], 0), number(x["p95_ms"], 0),
             number(x["cpu_per_audio_s"], 3), round_figures(x), number(x["foreign_cores"])]
            for name, x in (("fleet (HTTP)", http), ("in-process", local))]
    r = with_bands(r, http_bench.overhead_bands)
    cpu_share = (headline(signed_percent(r["stack_cpu_share"]), r.get("stack_cpu_share_band"), percent, GAIN)
                 if r.get("stack_cpu_share") is not None else "n/a")
    stack_cost = headline(cost(r["stack_cost"]) + " of throughput", r.get("stack_cost_band"), cost, GAIN,
                          "Stack cost")
    cpu_cost = headline(signed_percent(r["cpu_cost"]), r.get("cpu_cost_band"), percent, GAIN)
    verdict = (f"\n{stack_cost} (target: under 5%). In CPU seconds per audio second (our processes only, "
               f"so other tenants do not count), the fleet against in-process: {cpu_cost}, most of it the "
               f"engine's own CPU time varying with the machine's load; counting only the processes besides "
               f"the engine's decoder, the stack adds {cpu_share} of the in-process CPU. CPU seconds per "
               f"audio second, by process:\n")
    header = ["setup", "audio s/s", "req/s", "p50 ms", "p95 ms", "CPU s per audio s", "rounds (audio s/s)",
              "other tenants, cores"]
    return "\n".join([setup, table(header, rows), verdict, _kinds(http, local), details("fleet file used", r["fleet_toml"], "toml")])


def batching(r: dict) -> str:
    rows, verdicts, bands = [], [], table_bands(r, models.batching_bands, "gain_band")
    for c, x in r["table"].items():
        on, off = x["on"], x["off"]
        rows.append([c, number(on["audio_s_per_s"], 3), number(off["audio_s_per_s"], 3), signed_percent(x["gain"]),
                     band_cell(bands.get(c), percent, GAIN),
                     number(on["p50_ms"], 0), number(off["p50_ms"], 0), number(on["p95_ms"], 0), number(off["p95_ms"], 0),
                     number(x.get("mean_batch")), f"{number(on['foreign_cores'])} / {number(off['foreign_cores'])}"])
        verdicts.append(f"- {c} user(s): "
                        + headline(signed_percent(x["gain"]), bands.get(c), percent, GAIN, "batching gain"))
    env = r.get("engine_env") or {"ASR_ENGINE": "funasr", "ASR_MODEL": r.get("model", "")}
    setup = (f"Two direct Gunicorn workers (`gunicorn -c deploy/gunicorn.conf.py 'app:create_app()'` with "
             f"`{' '.join(f'{k}={v}' for k, v in env.items())}`), `ASR_BATCH_MAX_ITEMS=8` (on) and `=1` (off), "
             f"the rest default (`ASR_BATCH_WAIT_MS=10`). {r['requests_per_run']} requests per run split "
             f"over the users; the {len(r['files'])} short recordings (1 to 7 s, one or two VAD segments "
             f"each). The default, `ASR_BATCH_MAX_ITEMS=auto`, is 1 for Whisper on the CPU and 8 elsewhere "
             f"(`app/engines/__init__.py:batch_items`).\n")
    header = ["users", "on: audio s/s", "off: audio s/s", "batching gain",
              "gain per round (min / median / max)", "on p50 ms", "off p50 ms", "on p95 ms", "off p95 ms",
              "on: segments per model call", "other tenants, cores (on / off)"]
    if not any(bands.values()):  # nothing to judge the pooled gains by: no verdicts
        return "\n".join([setup, table(header, rows)])
    reading = ("The gain per round compares round r of batching on with round r of off; a gain whose "
               "per-round band includes zero is no measurable difference:\n")
    return "\n".join([setup, table(header, rows), reading, *verdicts, ""])


def _balancing_verdict(p95: dict | None, throughput: dict | None) -> str:
    """Which balancing is better, said only where every round agrees."""
    if p95 is None:
        return "No verdict: these figures were stored without their per-round band.\n"
    if measurable(p95, RATIO):
        better, worse = ("least_conn", "round robin") if p95["max"] < RATIO else ("round robin", "least_conn")
        text = f"**{better} balances better here**: its p95 is lower than {worse}'s in every round"
    else:
        text = f"**Neither balancing is measurably better** in p95 ({reason(p95, times, RATIO)})"
    if throughput is not None and measurable(throughput, RATIO):
        side = "higher" if throughput["min"] > RATIO else "lower"
        text += f"; least_conn's throughput is {side} than round robin's in every round"
    elif throughput is not None:
        text += f"; throughput: {NO_DIFFERENCE}"
    return text + ".\n"


def balancing(r: dict) -> str:
    r = with_bands(r, http_bench.balancing_bands)
    rows = [[name, number(x["p95_ms"], 0), number(x["p50_ms"], 0), number(x.get("short_p95_ms"), 0),
             number(x.get("long_p95_ms"), 0), number(x["audio_s_per_s"], 3), number(x["foreign_cores"])]
            for name, x in r["table"].items()]
    rr, lc = r["table"].get("round_robin"), r["table"].get("least_conn")
    ratios = ""
    if rr and lc:  # figures stored before the ratios were kept are worked out from the table
        p95 = r.get("p95_ratio", lc["p95_ms"] / rr["p95_ms"])
        throughput = r.get("throughput_ratio", lc["audio_s_per_s"] / rr["audio_s_per_s"])
        lines = [headline(times(p95), r.get("p95_band"), times, RATIO, "least_conn p95 / round robin p95"),
                 headline(times(throughput), r.get("throughput_band"), times, RATIO,
                          "least_conn throughput / round robin throughput"),
                 _balancing_verdict(r.get("p95_band"), r.get("throughput_band"))]
        ratios = "\n" + "\n\n".join(lines)
    setup = (f"Two fleets of two equal instances ({r['engine']}, weight 1 each: Nginx's weighted round robin "
             f"is then plain alternation), one with `balancing = \"round_robin\"`, one with "
             f"`\"least_conn\"`, taking turns. {r['concurrency']} users, {r['per_user']} requests each, over "
             f"{', '.join(r['files'])}. The per-round ratios divide round r of least_conn by round r of "
             f"round robin.\n")
    header = ["balancing", "p95 ms", "p50 ms", "short files p95 ms", "long file p95 ms", "audio s/s",
              "other tenants, cores"]
    return "\n".join([setup, table(header, rows), ratios, details("fleet file used", r["fleet_toml"], "toml")])


def rtf(r: dict) -> str:
    rows = [[name, x["model"], number(x["rtf"], 3), number(x["cpu_rtf"], 3),
             number(1 / x["cpu_rtf"], 1) if x["cpu_rtf"] else "n/a", number(x["cores_busy"], 2), number(x["load_s"], 1)]
            for name, x in r["table"].items()]
    setup = (f"Each engine alone in the benchmark process (`app.engines.load_engine`), one clip per call, "
             f"over the same {len(r['files'])} decoded recordings ({r['audio_s']} s of audio). RTF = wall "
             "seconds per audio second (lower is faster); CPU RTF = CPU seconds (all threads and child "
             "processes) per audio second, i.e. the RTF per core; its inverse is the audio seconds one core "
             "transcribes per second.\n")
    header = ["engine", "model", "RTF (wall)", "CPU RTF (per core)", "audio s per core-second", "cores busy",
              "load s"]
    return "\n".join([setup, table(header, rows)])


def whisper_stack(r: dict) -> str:
    w, f = r["worker"], r["faster_whisper"]
    rows = [[name, number(x["audio_s_per_s"], 3), number(x["p50_ms"], 0), number(x["p95_ms"], 0),
             ", ".join(number(v, 2) for v in x["per_round"]), number(x["foreign_cores"])]
            for name, x in (("Whisper base worker (HTTP)", w), ("faster-whisper in-process", f))]
    verdict = headline(cost(r["stack_cost"]), r.get("stack_cost_band"), cost, GAIN, "stack cost")
    on_gpu = r.get("device") == "cuda"  # older figures name no device: they ran on the CPU
    setup = (f"A direct Gunicorn worker (`ASR_ENGINE=whisper ASR_MODEL=base ASR_CPU_THREADS={r['threads']}"
             f"{' CUDA_VISIBLE_DEVICES=0' if on_gpu else ''}`) against faster-whisper's own "
             f"`BatchedInferencePipeline` (batch_size 8, its own VAD) on the same model, "
             f"{r.get('compute_type', 'int8')}{', on GPU 0' if on_gpu else ''}, {r['threads']} threads, "
             f"in the benchmark process, both fed the same uploads "
             f"by {r['concurrency']} users, {r['per_user']} recordings each per round, over "
             f"{', '.join(r['files'])}. The worker was ready {r['ready_s']} s after its start, with "
             f"{r['resident_mb']} MB resident (master and worker).\n")
    header = ["setup", "audio s/s", "p50 ms", "p95 ms", "rounds (audio s/s)", "other tenants, cores"]
    return "\n".join([setup, table(header, rows), verdict + "\n"])
