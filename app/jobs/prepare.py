"""Both ends of a work: cutting a recording into store segments, and
assembling the transcription from its finished segments.

Cutting is what `Transcriber.transcribe` does in-process (VAD, then
Whisper-sized windows), but a VAD chunk at a time, so the fleet starts on
the first segments while the rest is cut; assembling maps each window's
times back to the recording with the same `_timed`.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterator

import numpy as np

from app import audio, vad
from app.audio import SAMPLE_RATE
from app.errors import ASRError
from app.jobs import codec
from app.jobs.store import JOB, Done, NewSegment, Store
from app.service import Transcriber, Transcription, _timed

log = logging.getLogger(__name__)


def windows(transcriber: Transcriber, samples: np.ndarray) -> Iterator[list[vad.Window]]:
    """The recording's model windows, a VAD chunk at a time."""
    engine = transcriber._ready_engine()
    held: list[vad.Segment] = []  # the last window, which the next chunk's speech may still fill
    for segments in transcriber.segmenter.split_progressively(samples):
        if not engine.window_seconds:
            yield [vad.Window((segment,)) for segment in segments]
            continue
        merged = vad.merge(held + segments, engine.window_seconds)
        held = list(merged[-1].segments) if merged else []
        yield merged[:-1]
    if held:
        yield [vad.Window(tuple(held))]


def cut_into(store: Store, work_id: str, holder: str, transcriber: Transcriber,
             samples: np.ndarray) -> bool | None:
    """Queues the recording's segments as VAD finds them, so every worker
    starts on the first ones while the rest is still being cut. Returns
    `Store.end_cut`'s answer: None when the work went meanwhile."""
    if not store.begin_cut(work_id, holder):
        return None
    count = 0
    for batch in windows(transcriber, samples):
        segments = [NewSegment([(s.start, s.end) for s in window.segments], codec.to_pcm(window.cut(samples)),
                               round(window.duration, 3)) for window in batch]
        if segments and not store.add_segments(work_id, holder, segments):
            return None
        count += len(segments)
    log.info("work %s: %.0f s of audio cut into %d segments", work_id, len(samples) / SAMPLE_RATE, count)
    return store.end_cut(work_id, holder)


def assemble(done: list[Done], language: str, duration: float) -> Transcription:
    segments, failed, languages = [], 0, collections.Counter()
    for item in done:
        if item.result is None:
            failed += 1
            continue
        window = vad.Window(tuple(vad.Segment(start, end) for start, end in item.spans))
        outcome = codec.load_transcript(item.result)
        segments.extend(_timed(window, outcome))
        if outcome.language:
            languages[outcome.language] += 1
    if failed and not segments:
        raise ASRError(f"transcription failed for all {failed} segments")
    detected = languages.most_common(1)[0][0] if languages else language
    return Transcription(segments, failed, detected, duration)


def prepare_job(transcriber: Transcriber, store: Store, work, upload: bytes, holder: str) -> None:
    """Decodes a queued job's upload and queues its segments; a job whose
    audio cannot be decoded ends failed with the reason."""
    settings = transcriber.settings
    try:
        samples = audio.decode(upload, max_seconds=settings.max_job_audio_seconds,
                               ffmpeg_timeout=settings.ffmpeg_timeout_seconds * 4)
        complete = cut_into(store, work.id, holder, transcriber, samples)
    except ASRError as error:
        store.finish(work.id, "failed", error=error.message)
        return
    if complete:  # nothing to transcribe, or the fleet finished while the cut ended
        finalize(store, work.id)


def finalize(store: Store, work_id: str) -> None:
    """Assembles a job whose segments are all done and stores its result
    (once: a second finisher's write is refused by the store)."""
    work = store.get(work_id)
    if work is None or work.kind != JOB or work.status != "running":
        return
    try:
        result = assemble(store.results(work_id), work.options.get("language", "auto"), work.duration)
    except ASRError as error:
        store.finish(work_id, "failed", error=error.message)
        return
    body = {"segments": codec.dump_segments(result.segments), "failed_segments": result.failed_segments,
            "language": result.language, "duration": result.duration}
    if store.finish(work_id, "succeeded", result=json.dumps(body)):
        log.info("job %s succeeded: %d segments, %d failed", work_id, len(result.segments), result.failed_segments)


def load_result(text: str) -> Transcription:
    body = json.loads(text)
    return Transcription(codec.load_segments(body["segments"]), body["failed_segments"], body["language"],
                         body["duration"])
