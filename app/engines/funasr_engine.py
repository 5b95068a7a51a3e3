"""The FunASR engine: SenseVoiceSmall (or another FunASR model) via funasr.AutoModel.

funasr and modelscope are imported inside functions: importing funasr alone
takes ~6 s (it imports every model it registers), and pick_device or
model_is_available should not pay for that.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np

from app.engines.base import DecodeOptions, Piece, Transcript, Word

log = logging.getLogger(__name__)

SENSEVOICE_LANGUAGES = frozenset({"auto", "zh", "en", "yue", "ja", "ko"})
HUB_TIMEOUT_S = 2.0
# funasr shrinks the 25 ms fbank window to fit a shorter clip, and below ~280
# samples the window is too small for 80 mel bins: a ValueError that would fail
# the whole batch. Shorter clips are zero-padded to one full window instead.
MIN_SAMPLES = 400

_TAG = re.compile(r"<\|([^|<>]*)\|>")
# "nospeech", "EMO_UNKNOWN" and "Event_UNK" are SenseVoice saying it does not
# know, so they are reported as absent (None).
_LANGUAGE_TAGS = frozenset({"zh", "en", "yue", "ja", "ko"})
_EMOTION_TAGS = frozenset({"HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED"})
_EVENT_TAGS = frozenset({"Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough"})


def parse_rich_text(raw: str) -> Transcript:
    """Splits SenseVoice's "<|en|><|HAPPY|><|Speech|><|withitn|>Hello." into text and tags.

    Every <|...|> tag is removed wherever it appears; the first tag of each
    kind fills language, emotion (lower-case) and event (lower-case).
    """
    language = emotion = event = None
    for tag in _TAG.findall(raw):
        if tag in _LANGUAGE_TAGS and language is None:
            language = tag
        elif tag in _EMOTION_TAGS and emotion is None:
            emotion = tag.lower()
        elif tag in _EVENT_TAGS and event is None:
            event = tag.lower()
    text = " ".join(_TAG.sub("", raw).split())
    return Transcript(text=text, language=language, emotion=emotion, event=event)


def timed_words(tokens: list[str], spans: list[list[int]]) -> tuple[Word, ...]:
    """SenseVoice's timed tokens (milliseconds) as words a reader sees:
    punctuation joins the word before it, as in Whisper's words."""
    words: list[Word] = []
    for token, (start_ms, end_ms) in zip(tokens, spans):
        # "▁" marks a word's start in SentencePiece; FunASR leaves it on the first.
        token = _TAG.sub("", token).replace("\u2581", " ").strip()
        if not token:
            continue
        start, end = start_ms / 1000, max(end_ms, start_ms) / 1000
        if words and not any(char.isalnum() for char in token):
            last = words[-1]
            words[-1] = Word(last.start, max(last.end, end), last.word + token)
        else:
            words.append(Word(start, end, token))
    return tuple(words)


def pick_device(cuda_visible_devices: str | None) -> str:
    """"cuda:0" when CUDA_VISIBLE_DEVICES names a GPU and torch can use it, else "cpu"."""
    value = (cuda_visible_devices or "").strip()
    if not value or value.lower() in {"-1", "none", "nodevfiles"}:
        return "cpu"
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _looks_like_path(model: str) -> bool:
    """A hub id is "owner/name" or a funasr alias; anything else names a directory."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or Path(model).is_dir()


def _hub_id(model: str) -> str:
    from funasr.download.name_maps_from_hub import name_maps_ms

    return name_maps_ms.get(model, model)  # funasr's short names, e.g. "paraformer-zh"


def _cached_snapshot(model: str, cache_dir: str | None) -> str | None:
    """The local directory of an already downloaded hub model, else None; never networks."""
    from modelscope.hub.snapshot_download import snapshot_download

    try:
        path = snapshot_download(_hub_id(model), cache_dir=cache_dir, local_files_only=True)
    except Exception:  # modelscope raises CacheNotFound, ValueError, ... for "not cached"
        return None
    return path if (Path(path) / "config.yaml").is_file() else None


def model_is_available(model: str, cache_dir: str | None = None) -> tuple[bool, str]:
    """Whether `model` can be loaded: a local model directory, in the ModelScope cache
    (cache_dir, or modelscope's default ~/.cache/modelscope/hub when None), or on
    the hub answering within HUB_TIMEOUT_S. The string says why (one line)."""
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            return False, f"no such model directory: {path}"
        if not (path / "config.yaml").is_file():
            return False, f"{path} has no config.yaml: not a FunASR model directory"
        return True, f"local model directory {path}"
    cached = _cached_snapshot(model, cache_dir)
    if cached:
        return True, f"in the ModelScope cache at {cached}"
    import requests
    from modelscope.hub.utils.utils import get_endpoint

    url = f"{get_endpoint()}/api/v1/models/{_hub_id(model)}"
    try:
        response = requests.get(url, timeout=HUB_TIMEOUT_S)
    except requests.RequestException as error:
        return False, (f"no local directory {model!r}, not in the ModelScope cache, and the hub "
                       f"is unreachable ({type(error).__name__})")
    try:  # the API can answer 200 with {"Success": false} for an unknown model
        found = response.status_code == 200 and response.json().get("Success", True) is not False
    except ValueError:
        found = False
    if not found:
        return False, (f"no local directory {model!r}, not in the ModelScope cache, and the hub "
                       f"answers {response.status_code} for {url}")
    return True, f"on the ModelScope hub ({url}); it will be downloaded"


def prefetch(model: str, cache_dir: str | None = None) -> str:
    """Downloads a hub model once into the cache (a no-op for a local directory);
    returns its local path. `make serve` runs this before the workers start so
    that N workers never download N copies at once."""
    if _looks_like_path(model):
        return str(Path(model).expanduser())
    cached = _cached_snapshot(model, cache_dir)
    if cached:  # without asking the hub: a cached model must load offline
        return cached
    from modelscope.hub.snapshot_download import snapshot_download

    return snapshot_download(_hub_id(model), cache_dir=cache_dir)


class FunASREngine:
    """One funasr.AutoModel; SenseVoice tags become Transcript fields."""

    name = "funasr"
    # SenseVoice's cost follows the clip's length: no reason to merge segments.
    window_seconds = None
    # generate() pads a batch to its longest clip: the batcher keeps lengths close.
    pads_to_longest = True

    def __init__(self, automodel, model: str, device: str) -> None:
        self._automodel = automodel
        self.model = model
        self.device = device
        self.sensevoice = automodel.kwargs.get("model") == "SenseVoiceSmall"
        # Other FunASR models (Paraformer, ...) take no language hint.
        self.languages = SENSEVOICE_LANGUAGES if self.sensevoice else frozenset({"auto"})
        # SenseVoice times its tokens by CTC forced alignment (FunASR's
        # output_timestamp), for the requests whose options ask for words.
        self.word_timestamps = self.sensevoice

    @classmethod
    def load(cls, model: str, device: str, cache_dir: str | None = None, cpu_threads: int = 0) -> FunASREngine:
        """Builds the AutoModel for a local directory or a ModelScope hub id."""
        if _looks_like_path(model):
            # funasr would take a missing directory for a hub id and spend ~25 s
            # retrying a download before failing obscurely.
            available, reason = model_is_available(model)
            if not available:
                raise FileNotFoundError(reason)
        import torch
        from funasr import AutoModel

        if cpu_threads:
            torch.set_num_threads(cpu_threads)

        # A hub id is resolved to its cached snapshot here (downloading it if
        # missing): handed a hub id, funasr asks the hub on every load and, when
        # that fails, goes on with the id as a path and fails obscurely later.
        source = prefetch(model, cache_dir)
        automodel = AutoModel(
            model=source,
            device=device,
            # No vad_model: the app cuts audio into <=30 s segments itself with the
            # silero-vad wheel, so segments from many requests can share one batch;
            # funasr's VAD path would re-segment and sort every call on its own.
            disable_update=True,  # else it queries PyPI at every load
            check_latest=False,  # else it queries the hub about a local directory
            disable_pbar=True,  # else a tqdm bar on stderr per generate() call
            # funasr calls torch.set_num_threads(ncpu, default 4) on every generate().
            ncpu=torch.get_num_threads(),
            # Dither adds random noise to the features: the same audio would get
            # different transcripts from one request to the next.
            frontend_conf={"dither": 0.0},
        )
        # funasr quietly falls back to the CPU when CUDA is missing: report where it runs.
        device = automodel.kwargs.get("device", device)
        log.info("FunASR model %s loaded from %s on %s", model, source, device)
        return cls(automodel, model, device)

    def transcribe_batch(self, audios: list[np.ndarray], options: DecodeOptions) -> list[Transcript]:
        """One generate() call, hence one padded forward pass, for the whole batch."""
        language = options.language
        if language not in self.languages:
            raise ValueError(f"language {language!r} is not one of {sorted(self.languages)}")
        clips = [np.ascontiguousarray(audio, dtype=np.float32).reshape(-1) for audio in audios]
        clips = [np.pad(clip, (0, MIN_SAMPLES - clip.size)) if 0 < clip.size < MIN_SAMPLES else clip
                 for clip in clips]
        results = [Transcript(text="") for _ in clips]  # an empty clip stays empty
        indices = [i for i, clip in enumerate(clips) if clip.size]
        if not indices:
            return results
        timed = self.word_timestamps and options.words
        options = {"language": language, "use_itn": True} if self.sensevoice else {}
        batch = [clips[i] for i in indices]
        # funasr returns results in input order; every item gets the same random
        # "key", so order is the only way to match them up.
        try:
            outputs = self._automodel.generate(batch, batch_size=len(batch), **options,
                                               output_timestamp=timed)
        except IndexError as error:
            # FunASR's alignment indexes its tokens past their end when one
            # token maps to several ids; the text is fine, so the batch is
            # recognised again without word times rather than failed.
            log.warning("FunASR word timing failed (%s); this batch has no word times", error)
            outputs = self._automodel.generate(batch, batch_size=len(batch), **options)
        if len(outputs) != len(indices):
            raise RuntimeError(f"funasr returned {len(outputs)} results for {len(indices)} clips")
        for index, output in zip(indices, outputs):
            transcript = parse_rich_text(str(output.get("text", "")))
            words = timed_words(output.get("words") or [], output.get("timestamp") or [])
            if words and transcript.text:
                piece = Piece(words[0].start, words[-1].end, transcript.text, words)
                transcript = dataclasses.replace(transcript, pieces=(piece,))
            results[index] = transcript
        return results
