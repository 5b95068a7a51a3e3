"""The `peers` section of docs/benchmarks.md and its Summary rows (bench.peers
measures): every number here comes from the stored result."""

from __future__ import annotations

from .markdown import details, number
from .peers import setup_name
from .stats import NO_DIFFERENCE, RATIO, reason, times

SIDES = {"ours": "ours (fleet)", "peer": "peer"}
BOUNDS = {"throughput": "at least", "p95": "at most"}


def _x(value) -> str:
    return "n/a" if value is None else times(value)


def _ms(value) -> str:
    return number(None if value is None else float(value), 0)


def _why(ratio: dict) -> str:
    return reason(ratio, times, RATIO)


def _noise(ratio: dict) -> str:
    """What the per-round band says: nothing where it shows a difference."""
    return "" if ratio["measurable"] else f" ({_why(ratio)}: {NO_DIFFERENCE})"


def _band(ratio: dict | None) -> str:
    if ratio is None:
        return "n/a"
    return f"{_x(ratio['min'])} / {_x(ratio['median'])} / {_x(ratio['max'])}{_noise(ratio)}"


def verdict(figure: str, ratio: dict | None, goal: float) -> str:
    """One goal, said plainly: met, or how far short and whether the rounds
    even tell us apart from the peer."""
    what, bound = {"throughput": "throughput", "p95": "p95 latency"}[figure], BOUNDS[figure]
    if ratio is None:
        return f"- {what}: nothing to compare (a side answered no request): **goal not shown to be met**"
    higher = figure == "throughput"
    met = ratio["pooled"] >= goal if higher else ratio["pooled"] <= goal
    every = ratio["min"] >= goal if higher else ratio["max"] <= goal
    rounds = f"(per round {_x(ratio['min'])} to {_x(ratio['max'])})"
    if met:
        return (f"- {what}: **{_x(ratio['pooled'])}** the peer's {rounds}: meets the goal of {bound} {goal}x"
                + ("" if every else ", though not in every round") + _noise(ratio))
    worse = ratio["max"] < 1.0 if higher else ratio["min"] > 1.0
    why = (("the peer is faster" if higher else "the peer's p95 is lower") if worse else
           "better than the peer, not by enough")
    return (f"- {what}: **{_x(ratio['pooled'])}** the peer's {rounds}: **we fall short of the goal of {bound} "
            f"{goal}x**: " + (why if ratio["measurable"] else f"{NO_DIFFERENCE} from the peer ({_why(ratio)})"))


def cpu_why(x: dict, users: str, goal: float) -> str:
    """Why a throughput goal is missed, from the same rounds: throughput is
    the cores a side keeps busy over the CPU seconds it spends per audio second."""
    t = x["table"][users]
    if t["throughput"] is None or t["throughput"]["pooled"] >= goal:
        return ""
    o, p, cores = t["ours"], t["peer"], x["workers"] * x["threads"]
    cost = {side: t[side]["cores_busy"] / t[side]["audio_s_per_s"] for side in SIDES}
    need = cores / (goal * p["audio_s_per_s"])
    return (f"- why: throughput is the cores a side keeps busy over the CPU seconds it spends per audio second "
            f"(the load generator's share included on both). Cores busy: ours {o['cores_busy']:.2f}, the "
            f"peer's {p['cores_busy']:.2f}, of {cores}. CPU seconds per audio second: ours {cost['ours']:.3f}, "
            f"the peer's {cost['peer']:.3f}. Even with all {cores} cores busy, {goal}x would need ours at "
            f"{need:.3f}, {1 - need / cost['ours']:.0%} less than now, on the same model. The Profile "
            f"section's `{x['engine']}` worker shows how much of ours is the model call.\n")


def _setup(x: dict, r: dict) -> str:
    v, ours = x["versions"], x["ours"]
    if x["check"] == "status":
        peer = (f"FunASR's own server, shipped in the funasr {v.get('funasr')} wheel (fastapi {v.get('fastapi')}, "
                f"uvicorn {v.get('uvicorn')}, torch {v.get('torch')}; in `.cache/peers/funasr-server/`), on the "
                f"full-size random-weight SenseVoice model our fleet loads too (`scripts/make_tiny_model.py "
                f"--full-size`). It has no worker or thread flag: {x['workers']} uvicorn process whose async "
                f"handler runs the model inline, one request at a time; the model folder it loads is the same "
                f"files with `ncpu: {x['threads']}` in config.yaml, so torch runs {x['threads']} threads "
                f"(funasr's own default asks for more threads than the cores given).")
    else:
        peer = (f"faster-whisper-server {v.get('faster-whisper-server')} from PyPI, a small MIT FastAPI server by "
                f"andyjjrt (not speaches, which is not on PyPI), on faster-whisper {v.get('faster-whisper')} "
                f"(CTranslate2 {v.get('ctranslate2')}, uvicorn {v.get('uvicorn')}; in "
                f"`.cache/peers/faster-whisper-server/`), with Whisper base from the same CTranslate2 folder our "
                f"workers load, int8 on the CPU: {x['workers']} worker processes of {x['threads']} thread(s) "
                f"each (its handler runs inference inline, so one process serves one request at a time: "
                f"`--workers` is how it uses more cores), its transcription defaults otherwise (no VAD).")
    counts = ", ".join(f"{t['requests_per_round']} at {c} user(s)" for c, t in x["table"].items())
    return (f"{peer} The peer uses {x['workers'] * x['threads']} core(s): `{x['command']}`. Ours: a fleet of "
            f"{ours['instances']} instances ({x['engine']}), `balancing = \"least_conn\"`, "
            f"`ASR_CPU_THREADS={ours['threads']}` each: {ours['instances'] * ours['threads']} core(s). "
            f"Requests per round and side: {counts}, over {', '.join(r['files'])}.\n")


def _tables(x: dict) -> str:
    rows = [("| users | side | audio s/s | req/s | p50 ms | p95 ms | rounds (audio s/s) | rounds (p95 ms) | "
             "cores busy | failed | retried 503/429 | other tenants, cores |"), "|" + "---|" * 12]
    for c, t in x["table"].items():
        for side, name in SIDES.items():
            s = t[side]
            rows.append(f"| {c} | {name} | {s['audio_s_per_s']:.3f} | {s['req_per_s']:.3f} | {_ms(s['p50_ms'])} | "
                        f"{_ms(s['p95_ms'])} | {', '.join(f'{v:.2f}' for v in s['per_round'])} | "
                        f"{', '.join(_ms(v) for v in s['per_round_p95_ms'])} | {s['cores_busy']:.2f} | "
                        f"{s['failed']} | {s['retries']} | {s['foreign_cores']:.2f} |")
    rows += ["", ("| users | throughput, ours/peer | per round: min / median / max | p95, ours/peer | "
                  "per round: min / median / max |"), "|---|---|---|---|---|"]
    for c, t in x["table"].items():
        rows.append(f"| {c} | **{_x((t['throughput'] or {}).get('pooled'))}** | {_band(t['throughput'])} | "
                    f"**{_x((t['p95'] or {}).get('pooled'))}** | {_band(t['p95'])} |")
    return ("\n".join(rows) + "\n\nCores busy: CPU seconds of our processes (the load generator too, the same "
            "on both sides) per wall second; below the cores given, a side left CPU idle.\n")


def _answers(x: dict, r: dict) -> str:
    a = x["answers"]
    sent = {side: sum(t[side]["requests"] + t[side]["failed"] for t in x["table"].values()) for side in SIDES}
    failed = {side: sum(t[side]["failed"] for t in x["table"].values()) for side in SIDES}
    counts = ", ".join(f"{name} {a[s]['answers']} of {sent[s]} ({a[s]['empty']} empty)" for s, name in SIDES.items())
    lines = [f"Answers (every round, both concurrencies): {counts}."]
    if x["check"] == "wer":
        for side, name in SIDES.items():
            wer, jfk, real = a[side]["wer"], a[side]["jfk_wer"], a[side]["real_text"]
            lines.append(f"{name}: word error rate {_pct(wer)} against the references, JFK alone {_pct(jfk)}"
                         + (f" (real text: at most {r['max_wer']:.0%})." if real else
                            f": **not the recordings' text** (more than {r['max_wer']:.0%})."))
    else:
        same = sent["ours"] == sent["peer"]
        lines.append("The model's weights are random, so the text is noise: the check is that every request "
                     "got a 200 with a `text` string, "
                     + ("**and it failed**" if any(failed.values()) or not same else "and every one did")
                     + f" ({', '.join(f'{name} {failed[s]} failed' for s, name in SIDES.items())}; "
                     + ("the same request count on both sides)." if same else "**different request counts**)."))
    for side, name in SIDES.items():
        errors = [e for c in x["table"] for row in x["runs"][setup_name(side, int(c))] for e in row.get("errors", [])]
        if errors:
            lines.append(f"First error from {name}: `{errors[0]}`.")
    return " ".join(lines) + "\n"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def render(r: dict) -> str:
    """The section of docs/benchmarks.md (bench.doc.SECTIONS)."""
    g, users = r["goals"], str(r["goal_users"])
    parts = [(f"Our fleet and an outside server on the same model, through each one's OpenAI-compatible "
              f"`POST /v1/audio/transcriptions` with the same form (`model=whisper-1`, `language=en`, "
              f"`response_format=json`), the same cores for each side. Each round sends the same fixed work to "
              f"each side at each concurrency, in alternating order. A 503 or 429 (our fleet refuses at once "
              f"when every instance has its `max_concurrent` requests) is retried after its Retry-After, as "
              f"`scripts/transcribe.py` and OpenAI's client do, and the latency includes that wait. Ratios are "
              f"ours/peer: throughput above 1 and p95 below 1 favour us. Goals at {users} users: at least "
              f"{g['throughput']}x the peer's throughput with at most {g['p95']}x its p95.\n")]
    for x in r["peers"].values():
        parts.append(f"### Against {x['label']}\n")
        if "skipped" in x:
            parts.append(f"Not measured: {x['skipped']}\n")
            continue
        goals = [verdict(f, x["table"][users][f], g[f]) for f in ("throughput", "p95")]
        parts += [_setup(x, r), _tables(x),
                  f"At {users} users:\n\n" + "\n".join(goals) + "\n" + cpu_why(x, users, g["throughput"]),
                  _answers(x, r),
                  details("our fleet file", x["fleet_toml"], "toml")]
        if x.get("config_text"):
            parts.append(details("the peer's config file", x["config_text"], "yaml"))
    return "\n".join(parts)


def summary_rows(r: dict) -> list[list[str]]:
    """The Summary table's rows: the two goals against each peer."""
    rows = []
    for x in r.get("peers", {}).values():
        if "skipped" in x:
            continue
        for figure, bound in BOUNDS.items():
            ratio = x["table"][str(r["goal_users"])][figure]
            measured = "n/a" if ratio is None else (
                f"{_x(ratio['pooled'])} (rounds {_x(ratio['min'])} to {_x(ratio['max'])}){_noise(ratio)}")
            rows.append([f"vs {x['label']}, {r['goal_users']} users: {figure} ours/peer", measured,
                         f"{bound} {r['goals'][figure]}x"])
    return rows
