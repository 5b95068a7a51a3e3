"""The embedded engine: CMU PocketSphinx with the en-US model in its wheel.

It needs no download and no GPU, so a worker can always serve something; its
accuracy is far below SenseVoice's, which is why every response names it.

PocketSphinx holds Python's GIL for the whole of each decoding call (up to a
quarter second even for 50 ms of audio), which would stall /health and every
handler thread. So the decoder lives in a child process of the worker and the
inference thread waits on a pipe, which releases the GIL.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading

import numpy as np

from app.engines.base import SAMPLE_RATE, DecodeOptions, Transcript

MODEL_NAME = "pocketsphinx/en-us"
log = logging.getLogger(__name__)


def _decoder_loop(connection) -> None:
    """Runs in the child: decodes lists of int16 PCM clips until the pipe closes."""
    from pocketsphinx import Decoder

    # fwdflat (the second, flat-lexicon pass) costs ~0.25 s per utterance and
    # does not pay here: without it the shared LibriVox clips' word error
    # rate is lower (0.34 vs 0.43).
    decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", fwdflat=False)
    connection.send("ready")
    while True:
        try:
            clips = connection.recv()
        except EOFError:  # the worker is gone
            return
        texts = []
        for pcm in clips:
            # The same audio must give the same text whatever was decoded
            # before it. The feature front end carries state from one
            # utterance to the next (the cepstral mean and more: restoring
            # the initial mean with set_cmn, or turning noise removal off,
            # still left JFK with 5 different texts after 11 other clips), so
            # it starts afresh for every clip: 0.02 ms, against ~150 ms per
            # second of audio decoded, and the same LibriVox WER (0.364).
            decoder.reinit_feat()
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hypothesis = decoder.hyp()
            texts.append(hypothesis.hypstr.strip() if hypothesis is not None else "")
        connection.send(texts)


class PocketSphinxEngine:
    """A pocketsphinx Decoder in a child process, restarted if it dies."""

    name = "pocketsphinx"
    model = MODEL_NAME
    device = "cpu"
    languages = frozenset({"auto", "en"})
    window_seconds = None

    def __init__(self) -> None:
        # spawn, not fork: the worker has threads, and a forked copy of a
        # threaded process can inherit a held lock.
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._process = None
        self._connection = None

    @classmethod
    def load(cls) -> PocketSphinxEngine:
        engine = cls()
        engine._start()
        return engine

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_decoder_loop, args=(child,),
                                        name="pocketsphinx", daemon=True)
        process.start()
        child.close()
        if not parent.poll(60) or parent.recv() != "ready":
            process.kill()
            raise RuntimeError("pocketsphinx decoder process did not start")
        self._process, self._connection = process, parent

    def transcribe_batch(self, audios: list[np.ndarray], options: DecodeOptions) -> list[Transcript]:
        clips = [(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes() for audio in audios]
        with self._lock:
            try:
                self._connection.send(clips)
                texts = self._connection.recv()
            except (EOFError, OSError) as error:
                # The batcher retries; the next try finds a fresh decoder.
                log.error("pocketsphinx decoder process died (%s); restarting it", error)
                self._process.kill()
                self._start()
                raise RuntimeError("pocketsphinx decoder process died") from error
        return [Transcript(text=text, language="en") for text in texts]
