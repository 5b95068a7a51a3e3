"""/v1/jobs: transcription jobs, for recordings longer than a client wants
to wait on one connection.

POST takes the same form as /v1/audio/transcriptions, checks and decodes
the upload at once (bad audio is a 4xx now, not a failed job later), stores
it and answers 202. Any worker of the host answers for any job: the state
lives in the shared store. A job belongs to the API key that made it; with
keys, another key's job is a 404 like one that never existed.
"""

from __future__ import annotations

import hashlib
import re
import time

import flask

from app import audio
from app.errors import BadRequest, Conflict, Gone, NotFound, Overloaded
from app.jobs import prepare
from app.jobs.store import FINISHED, JOB, Work
from app.routers.common import transcriber as _transcriber
from app.routers.common import upload as _upload
from app.routers.openai import render_as
from app.routers.openai_params import language_field, response_format_field

bp = flask.Blueprint("jobs", __name__)

ADMITTED_ENDPOINTS = frozenset({"jobs.create"})
JOB_ID = re.compile(r"[0-9a-f]{32}")
LIST_LIMIT = 100


def _jobs():
    jobs = flask.current_app.extensions.get("jobs")
    if jobs is None:
        raise Overloaded("jobs are not enabled on this worker (ASR_JOB_DB is unset)", retry_after=60)
    return jobs


def _owner() -> str:
    """Who may see a job: a hash of the API key (never the key itself), or
    "" on a fleet without keys. app/auth.py has already checked the key."""
    _, _, key = flask.request.headers.get("Authorization", "").partition(" ")
    return hashlib.sha256(key.strip().encode()).hexdigest()[:32] if key.strip() else ""


def _job(job_id: str) -> Work:
    if not JOB_ID.fullmatch(job_id):
        raise BadRequest(f"{job_id[:40]!r} is not a job id (32 hex characters)", param="id")
    work = _jobs().store.get(job_id)
    if work is None or work.kind != JOB or work.owner != _owner():
        raise NotFound(f"no job {job_id}", param="id")
    return work


def view(work: Work) -> dict:
    """A job as clients see it: status and progress, with an ETA."""
    status = "running" if work.status == "preparing" else work.status
    cut = work.status not in ("queued", "preparing")
    progress = {
        "segments_done": work.segments_done + work.segments_failed if cut else 0,
        "segments_failed": work.segments_failed,
        "segments_total": work.segments_total if cut else None,
        "audio_seconds_done": round(work.audio_done, 1),
        "audio_seconds_total": round(work.audio_total, 1) if cut else None,
        "eta_s": _eta(work),
    }
    body = {"id": work.id, "object": "transcription.job", "status": status, "filename": work.filename,
            "duration": round(work.duration, 3), "language": work.options.get("language"),
            "created_at": int(work.created), "started_at": work.started and int(work.started),
            "finished_at": work.finished and int(work.finished), "progress": progress, "error": work.error}
    if work.status == "succeeded":
        body["result_url"] = f"/v1/jobs/{work.id}/result"
    return body


def _eta(work: Work) -> float | None:
    if work.status in FINISHED:
        return 0.0 if work.status == "succeeded" else None
    if work.status == "running" and work.audio_done > 0 and work.started:
        rate = work.audio_done / max(time.time() - work.started, 1e-3)
        return round((work.audio_total - work.audio_done) / rate, 1)
    # Not cut yet, or nothing done: the fleet's measured speed over all of it.
    remaining = work.audio_total if work.status == "running" else work.duration
    return round(_jobs().pace.eta(remaining), 1)


def render(result, response_format: str):
    """The body /v1/audio/transcriptions would have given for this result."""
    transcriber = _transcriber()
    model = transcriber.engine.model if transcriber.engine else transcriber.settings.model
    return render_as(result, response_format, model=model)


@bp.post("/v1/jobs")
def create():
    transcriber = _transcriber()
    form = flask.request.form
    response_format = response_format_field(form)
    language = language_field(form.get("language"))  # OpenAI's 400, as /v1/audio/transcriptions
    data = _upload()
    settings = transcriber.settings
    samples = audio.decode(data, max_seconds=settings.max_job_audio_seconds,
                           ffmpeg_timeout=settings.ffmpeg_timeout_seconds * 4)
    upload = flask.request.files["file"]
    # The request ID makes a POST that Nginx replays (its worker died) find
    # the job it already made instead of making a second one.
    key = hashlib.sha256(f"job|{flask.g.request_id}|".encode() + hashlib.sha256(data).digest()).hexdigest()
    jobs = _jobs()
    job_id, _ = jobs.store.create(
        kind=JOB, owner=_owner(), key=key, filename=(upload.filename or "")[:200],
        options={"language": language, "prompt": form.get("prompt") or None, "response_format": response_format},
        duration=len(samples) / audio.SAMPLE_RATE, holder=None, upload=data)
    jobs.puller.wake()
    response = flask.jsonify(view(jobs.store.get(job_id)))
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return response


@bp.get("/v1/jobs")
def list_jobs():
    try:
        limit = min(max(int(flask.request.args.get("limit", 20)), 1), LIST_LIMIT)
    except ValueError:
        raise BadRequest("limit must be a whole number", param="limit") from None
    works = _jobs().store.list(_owner(), JOB, limit)
    return {"object": "list", "data": [view(work) for work in works]}


@bp.get("/v1/jobs/<job_id>")
def get(job_id: str):
    return view(_job(job_id))


@bp.get("/v1/jobs/<job_id>/result")
def result(job_id: str):
    work = _job(job_id)
    if work.status == "cancelled":
        raise Gone(f"job {job_id} was cancelled: its audio and result are deleted")
    if work.status == "failed":
        raise Conflict(f"job {job_id} failed: {work.error}")
    if work.status != "succeeded":
        done = view(work)["progress"]
        raise Conflict(f"job {job_id} is not finished ({view(work)['status']}, {done['segments_done']} of "
                       f"{done['segments_total'] or '?'} segments); poll GET /v1/jobs/{job_id}")
    requested = flask.request.args.get("response_format") or work.options.get("response_format", "json")
    response_format = response_format_field({"response_format": requested})
    transcription = prepare.load_result(work.result)
    return render(transcription, response_format)


@bp.delete("/v1/jobs/<job_id>")
def delete(job_id: str):
    work = _job(job_id)
    store = _jobs().store
    if work.status in FINISHED:
        store.delete(job_id)
        return {"id": job_id, "object": "transcription.job", "status": work.status, "deleted": True}
    store.cancel(job_id)
    return {"id": job_id, "object": "transcription.job", "status": "cancelled", "deleted": True}
