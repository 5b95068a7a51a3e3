"""The Whisper engine: faster-whisper (CTranslate2), batched across requests.

One transcribe_batch call is one encoder pass and one batched generate()
over every clip in it, whichever requests they came from: the batched half
of faster-whisper's BatchedInferencePipeline, without its VAD (the app cuts
and merges speech into <= 30 s windows itself, before batching).

Times come from the model: Whisper's timestamp tokens split a window into
pieces, and its cross-attention alignment times every word.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from app.engines.base import DecodeOptions, Piece, Transcript, Word

log = logging.getLogger(__name__)

BEAM_SIZE = 5
# faster-whisper's silence rule: a window the model thinks holds no speech,
# and whose text it is unsure of or repeats over and over (text that gzip
# squeezes hard), is a hallucination, so it yields no text.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
TOKENS_PER_SECOND = 15
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
# Whisper writes Mandarin in traditional or simplified characters at random;
# SenseVoice answers simplified, and so do we.
SIMPLIFIED = frozenset({"zh", "yue"})


def pick_device(cuda_visible_devices: str | None) -> str:
    """"cuda:0" when CUDA_VISIBLE_DEVICES names a GPU that CTranslate2 sees, else "cpu"."""
    value = (cuda_visible_devices or "").strip()
    if not value or value.lower() in {"-1", "none", "nodevfiles"}:
        return "cpu"
    import ctranslate2

    return "cuda:0" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class WhisperEngine:
    """One faster_whisper.WhisperModel; the inference thread is its only caller."""

    name = "whisper"
    window_seconds = 30.0
    # Capabilities the OpenAI endpoints ask for (engines without them lack the attributes).
    word_timestamps = True
    # On the CPU (int8, one thread), Whisper base spent 30% more CPU per audio
    # second on the short recordings in batches of 4 than one by one, 42% more
    # in batches of 8 (every clip padded to 30 s, beams of unequal length):
    # there it runs one segment per call. A GPU batches.
    batches_on_cpu = False

    def __init__(self, whisper_model, model: str, device: str) -> None:
        import opencc
        from faster_whisper.tokenizer import Tokenizer

        self._whisper = whisper_model
        self._tokenizer_class = Tokenizer
        self._to_simplified = opencc.OpenCC("t2s")
        self.model = model
        self.device = device
        self.multilingual = whisper_model.model.is_multilingual
        codes = set(whisper_model.supported_languages) if self.multilingual else {"en"}
        # Translation into English needs the multilingual vocabulary (not *.en).
        self.tasks = frozenset({"transcribe", "translate"} if self.multilingual else {"transcribe"})
        # SenseVoice's "yue" works on every model: as Cantonese where the
        # model has the token (large-v3), else as Chinese.
        self.languages = frozenset(codes | {"auto"} | ({"yue"} if "zh" in codes else set()))

    @classmethod
    def load(cls, path: Path, model: str, device: str, compute_type: str, cpu_threads: int) -> WhisperEngine:
        from faster_whisper import WhisperModel
        from threadpoolctl import threadpool_limits

        # numpy's OpenBLAS keeps a pool of spinning threads of its own beside
        # CTranslate2's OpenMP pool; on a few cores the two pools fight for
        # them. The only BLAS work here (the mel filter product of the
        # feature extraction) is small: one thread does it.
        threadpool_limits(limits=1, user_api="blas")
        if compute_type == "auto":
            compute_type = "float16" if device.startswith("cuda") else "int8"
        whisper_model = WhisperModel(
            str(path), device="cuda" if device.startswith("cuda") else "cpu", device_index=0,
            compute_type=compute_type, cpu_threads=cpu_threads, local_files_only=True)
        log.info("Whisper model %s loaded from %s on %s (%s, %s CPU threads)", model, path, device,
                 compute_type, cpu_threads or "all")
        return cls(whisper_model, model, device)

    def transcribe_batch(self, audios: list[np.ndarray], options: DecodeOptions) -> list[Transcript]:
        from faster_whisper.audio import pad_or_trim

        whisper = self._whisper
        clips = [np.ascontiguousarray(audio, dtype=np.float32).reshape(-1) for audio in audios]
        features = np.stack([pad_or_trim(whisper.feature_extractor(clip)[..., :-1]) for clip in clips])
        encoded = whisper.encode(features)
        languages = self._languages(encoded, options.language, len(clips))
        results: list[Transcript | None] = [None] * len(clips)
        for language in dict.fromkeys(languages):
            indices = [i for i, code in enumerate(languages) if code == language]
            # A batch of mixed languages is rare (auto over several speakers):
            # each language group then gets its own, smaller, encoder pass.
            group_encoded = encoded if len(indices) == len(clips) else whisper.encode(features[indices])
            durations = [len(clips[i]) / whisper.feature_extractor.sampling_rate for i in indices]
            for index, transcript in zip(indices, self._decode(group_encoded, durations, language, options)):
                results[index] = transcript
        return results  # type: ignore[return-value]

    def _languages(self, encoded, requested: str, count: int) -> list[str]:
        if not self.multilingual:
            return ["en"] * count
        if requested != "auto":
            code = "zh" if requested == "yue" and "yue" not in self._whisper.supported_languages else requested
            return [code] * count
        # Detected per clip: each window of a long recording may differ.
        return [ranked[0][0][2:-2] for ranked in self._whisper.model.detect_language(encoded)]

    def _decode(self, encoded, durations: list[float], language: str, options: DecodeOptions) -> list[Transcript]:
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        whisper = self._whisper
        tokenizer = self._tokenizer_class(whisper.hf_tokenizer, self.multilingual, task=options.task,
                                          language=language)
        previous = tokenizer.encode(" " + options.prompt.strip()) if options.prompt else []
        prompt = whisper.get_prompt(tokenizer, previous, without_timestamps=False)
        sampling = {"beam_size": BEAM_SIZE}
        if options.temperature > 0:  # as faster-whisper: sample instead of beam search
            sampling = {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": options.temperature}
        # Speech is at most ~15 tokens a second, timestamps included: the
        # bound stops a hallucinated repetition loop early on a short clip.
        new_tokens = int(TOKENS_PER_SECOND * max(durations)) + 20
        results = whisper.model.generate(
            encoded, [list(prompt) for _ in durations],
            max_length=min(whisper.max_length, len(prompt) + new_tokens),
            suppress_blank=True, suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            return_scores=True, return_no_speech_prob=True, **sampling)
        pieces, sizes, scores = [], [], []
        for result, duration in zip(results, durations):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            size = int(math.ceil(duration) * whisper.frames_per_second)
            split, _, _ = whisper._split_segments_by_timestamps(
                tokenizer=tokenizer, tokens=tokens, time_offset=0.0, segment_size=size,
                segment_duration=duration, seek=0)
            pieces.append(split)
            sizes.append(size)
            scores.append((avg_logprob, result.no_speech_prob))
        if options.words:  # one more decoder pass (cross-attention alignment) over the batch
            # Every clip keeps at least one piece here: the aligner indexes each one.
            whisper.add_word_timestamps(pieces, tokenizer, encoded, sizes, PREPEND_PUNCTUATION,
                                        APPEND_PUNCTUATION, 0.0)
        transcripts = []
        for split, duration, (avg_logprob, no_speech_prob) in zip(pieces, durations, scores):
            timed = []
            whole = tokenizer.decode([t for piece in split for t in piece["tokens"]])
            unsure = avg_logprob < LOGPROB_THRESHOLD or get_compression_ratio(whole) > COMPRESSION_RATIO_THRESHOLD
            silent = no_speech_prob > NO_SPEECH_THRESHOLD and unsure
            for piece in [] if silent else split:
                text = self._clean(tokenizer.decode(piece["tokens"]), language)
                if not text:
                    continue
                words = tuple(Word(_within(w["start"], duration), _within(w["end"], duration),
                                   self._clean(w["word"], language), round(float(w["probability"]), 4))
                              for w in _whole_words(piece.get("words", []), language))
                timed.append(Piece(_within(piece["start"], duration), _within(piece["end"], duration), text,
                                   words, avg_logprob=round(float(avg_logprob), 4),
                                   no_speech_prob=round(float(no_speech_prob), 4),
                                   compression_ratio=round(get_compression_ratio(text), 4)))
            joiner = "" if language in SIMPLIFIED or language in ("ja", "th") else " "
            transcripts.append(Transcript(text=joiner.join(p.text for p in timed), language=language,
                                          pieces=tuple(timed)))
        return transcripts

    def _clean(self, text: str, language: str) -> str:
        text = text.strip()
        return self._to_simplified.convert(text) if language in SIMPLIFIED else text


def _whole_words(words: list[dict], language: str) -> list[dict]:
    """Whisper's words as a reader sees them: in a language written with
    spaces, a piece that starts without one ("-disposed" after "ill") is
    the rest of the word before it. So the words joined by spaces are the text."""
    spaced = language not in SIMPLIFIED and language not in ("ja", "th")
    whole: list[dict] = []
    for word in words:
        if not word["word"].strip():
            continue
        if spaced and whole and not word["word"].startswith(" "):
            last = whole[-1]
            whole[-1] = {"word": last["word"] + word["word"], "start": last["start"], "end": word["end"],
                         "probability": min(last["probability"], word["probability"])}
        else:
            whole.append(word)
    return whole


def _within(seconds: float, duration: float) -> float:
    # Whisper's last timestamp token can point past the end of a short clip.
    return round(min(max(float(seconds), 0.0), duration), 3)
