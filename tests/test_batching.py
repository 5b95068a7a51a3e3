"""The batcher around the real embedded engine.

Engine failures cannot be produced on demand by a healthy model, so the retry
tests wrap the real engine in one that fails where told to.
"""

import time

import numpy as np
import pytest
import soundfile
from machine import wait_for

from app.batching import Batcher, wait_all
from app.engines import DecodeOptions
from app.engines.pocketsphinx_engine import PocketSphinxEngine
from app.errors import DeadlineExceeded, Overloaded

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def engine():
    return PocketSphinxEngine.load()


@pytest.fixture(scope="module")
def clips(audio_dir):
    return [soundfile.read(audio_dir / f"cards00{i}.wav", dtype="float32")[0] for i in range(1, 6)]


class FailingEngine:
    """The real engine, except for clips of one length or the first N calls."""

    def __init__(self, engine, *, poison_length=None, fail_calls=0):
        self.engine, self.poison_length, self.fail_calls = engine, poison_length, fail_calls
        self.calls = []

    def transcribe_batch(self, audios, options):
        self.calls.append(len(audios))
        if len(self.calls) <= self.fail_calls:
            raise RuntimeError("transient failure")
        if any(len(a) == self.poison_length for a in audios):
            raise RuntimeError("poisoned clip")
        return self.engine.transcribe_batch(audios, options)


def make_batcher(engine, **overrides):
    sizes = []
    options = dict(max_items=8, max_seconds=60, wait_s=0.05, queue_limit=16, retries=3,
                   backoff_s=0.01, on_batch=lambda size, audio_s, model_s: sizes.append(size))
    options.update(overrides)
    batcher = Batcher(engine, **options)
    batcher.start()
    return batcher, sizes


def later(seconds=60):
    return time.monotonic() + seconds


def test_segments_submitted_together_run_as_one_batch(engine, clips):
    batcher, sizes = make_batcher(engine)
    outcomes = wait_all(batcher.submit(clips, DecodeOptions("en"), later()), later())
    assert sizes == [5]
    assert "clubs" in outcomes[0].text and all(not isinstance(o, Exception) for o in outcomes)


def test_batches_respect_item_and_audio_limits(engine, clips):
    batcher, sizes = make_batcher(engine, max_items=2)
    wait_all(batcher.submit(clips, DecodeOptions("en"), later()), later())
    assert sizes == [2, 2, 1]
    longest = max(len(c) for c in clips) / 16000
    batch_seconds = []
    batcher, _ = make_batcher(engine, max_seconds=longest,
                              on_batch=lambda size, audio_s, model_s: batch_seconds.append(audio_s))
    wait_all(batcher.submit(clips, DecodeOptions("en"), later()), later())
    assert max(batch_seconds) <= longest and len(batch_seconds) >= 3


def test_languages_are_never_mixed_in_a_batch(engine, clips):
    recorder = FailingEngine(engine)
    batcher, sizes = make_batcher(recorder, wait_s=0.2)
    english = batcher.submit(clips[:2], DecodeOptions("en"), later())
    automatic = batcher.submit(clips[2:], DecodeOptions("auto"), later())
    wait_all(english + automatic, later())
    assert sorted(sizes) == [2, 3]


def test_a_transient_failure_is_retried(engine, clips):
    flaky = FailingEngine(engine, fail_calls=1)
    batcher, _ = make_batcher(flaky)
    outcomes = wait_all(batcher.submit(clips[:3], DecodeOptions("en"), later()), later())
    assert all(not isinstance(o, Exception) for o in outcomes)
    assert flaky.calls[0] == 3 and flaky.calls[1:] == [1, 1, 1]  # retried one by one


def test_a_poisoned_segment_fails_alone_after_its_retries(engine, clips):
    poisoned = FailingEngine(engine, poison_length=len(clips[1]))
    batcher, _ = make_batcher(poisoned, retries=2)
    outcomes = wait_all(batcher.submit(clips[:3], DecodeOptions("en"), later()), later())
    assert [isinstance(o, Exception) for o in outcomes] == [False, True, False]
    assert poisoned.calls.count(1) >= 3  # the poisoned clip's two retries ran alone


def test_full_queue_refuses_the_whole_request(engine, clips):
    batcher = Batcher(engine, max_items=1, max_seconds=60, wait_s=0, queue_limit=3, retries=0,
                      backoff_s=0)  # not started: nothing drains the queue
    assert len(batcher.submit(clips, DecodeOptions("en"), later())) == 5  # an empty queue takes anything
    with pytest.raises(Overloaded, match="queue full"):
        batcher.submit(clips[:1], DecodeOptions("en"), later())
    assert batcher.depth == 5


def test_expired_jobs_are_not_run(engine, clips):
    recorder = FailingEngine(engine)
    batcher, _ = make_batcher(recorder)
    jobs = batcher.submit(clips[:2], DecodeOptions("en"), time.monotonic() - 1)
    wait_for(lambda: all(job.future.done() for job in jobs), 30, "the expired jobs to be settled")
    assert all(isinstance(job.future.exception(), DeadlineExceeded) for job in jobs)
    assert recorder.calls == []
    # Settled as expired before the handler looked: still the request's
    # deadline, never a failed segment of a partial answer.
    with pytest.raises(DeadlineExceeded):
        wait_all(jobs, later())


def test_waiting_past_the_deadline_raises(engine, clips):
    batcher = Batcher(engine, max_items=1, max_seconds=60, wait_s=0, queue_limit=3, retries=0,
                      backoff_s=0)  # not started
    with pytest.raises(DeadlineExceeded):
        wait_all(batcher.submit(clips[:1], DecodeOptions("en"), later()), time.monotonic() + 0.2)


class Padding(FailingEngine):
    """The real engine, declaring that it pads a batch to its longest clip
    (as FunASR's does); records each batch's clip lengths in seconds."""

    pads_to_longest = True

    def __init__(self, engine):
        super().__init__(engine)
        self.batches = []

    def transcribe_batch(self, audios, options):
        self.batches.append(sorted(round(len(a) / 16000, 2) for a in audios))
        return super().transcribe_batch(audios, options)


def test_an_engine_that_pads_gets_batches_of_close_lengths(engine, clips):
    # cards003 and cards004 are 1.54 and 1.55 s, cards005 3.50 s: one of
    # each long, then short, in arrival order.
    long_one = np.concatenate([clips[4], clips[4]])
    arrivals = [clips[2], long_one, clips[3], clips[4], long_one]
    padding = Padding(engine)
    batcher, _ = make_batcher(padding, wait_s=0.2)
    outcomes = wait_all(batcher.submit(arrivals, DecodeOptions("en"), later()), later())
    assert all(not isinstance(o, Exception) for o in outcomes)
    # Together all five would be padded to 7 s each: 35 s for 19 s of audio.
    assert padding.batches == [[1.54, 1.55], [7.0, 7.0], [3.5]], padding.batches
    assert "clubs" in outcomes[0].text  # "seven of clubs", answered in its own place


def test_an_engine_that_does_not_pad_batches_any_lengths(engine, clips):
    recorder = FailingEngine(engine)
    batcher, _ = make_batcher(recorder, wait_s=0.2)
    wait_all(batcher.submit([clips[2], np.concatenate([clips[4], clips[4]]), clips[3]], DecodeOptions("en"),
                            later()), later())
    assert recorder.calls == [3]
