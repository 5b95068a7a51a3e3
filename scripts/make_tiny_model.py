"""Writes a SenseVoice-architecture FunASR model directory with random weights.

The real SenseVoiceSmall lives on ModelScope, which tests and offline hosts
cannot reach. This builds a stand-in that loads through the very same path
(`funasr.AutoModel(model=DIR)`: configuration.json, config.yaml, a
sentencepiece tokenizer, am.mvn, model.pt) so the engine code is exercised for
real. Its output is noise.

    make_tiny_model.py DIR              # tiny dims: builds and runs in seconds
    make_tiny_model.py DIR --full-size  # SenseVoiceSmall's shape: real compute cost
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

TOKENIZER_FILE = "chn_jpn_yue_eng_ko_spectok.bpe.model"  # the real repository's name
FULL_VOCAB_SIZE = 25055  # SenseVoiceSmall's vocabulary (its CTC output width)
INPUT_SIZE = 80 * 7  # 80 mel bins stacked by low frame rate (lfr_m = 7)

# The rich-transcription tags SenseVoice emits first in every result: language,
# emotion, audio event, text normalisation. As user-defined symbols they decode
# verbatim, so funasr's and our tag postprocessing see what the real model gives.
SPECIAL_TOKENS = [
    "<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>",
    "<|HAPPY|>", "<|SAD|>", "<|ANGRY|>", "<|NEUTRAL|>", "<|FEARFUL|>",
    "<|DISGUSTED|>", "<|SURPRISED|>", "<|EMO_UNKNOWN|>",
    "<|Speech|>", "<|BGM|>", "<|Applause|>", "<|Laughter|>", "<|Cry|>",
    "<|Sneeze|>", "<|Breath|>", "<|Cough|>", "<|Event_UNK|>",
    "<|withitn|>", "<|woitn|>",
]

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "sense and sensibility was written by jane austen",
    "ask not what your country can do for you",
    "one two three four five six seven eight nine ten",
    "hello world this is a tiny speech model with random weights",
]

TINY_ENCODER = {"output_size": 32, "attention_heads": 2, "linear_units": 64,
                "num_blocks": 2, "tp_blocks": 1}
FULL_ENCODER = {"output_size": 512, "attention_heads": 4, "linear_units": 2048,
                "num_blocks": 50, "tp_blocks": 20}


def build_config(full_size: bool) -> dict:
    """The config.yaml contents: SenseVoiceSmall's, with tiny encoder dims unless full_size."""
    encoder_conf = dict(FULL_ENCODER if full_size else TINY_ENCODER)
    encoder_conf.update({
        "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
        "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True, "kernel_size": 11, "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
    })
    return {
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": encoder_conf,
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                          "frame_shift": 10, "lfr_m": 7, "lfr_n": 6, "cmvn_file": None},
        "specaug": "SpecAugLFR",
        "specaug_conf": {"apply_time_warp": False, "time_warp_window": 5,
                         "time_warp_mode": "bicubic", "apply_freq_mask": True,
                         "freq_mask_width_range": [0, 30], "lfr_rate": 6, "num_freq_mask": 1,
                         "apply_time_mask": True, "time_mask_width_range": [0, 12],
                         "num_time_mask": 1},
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True,
                     "ignore_nan_grad": True},
        "normalize": None,
    }


def write_tokenizer(path: Path, vocab_size: int | None) -> int:
    """Trains a sentencepiece model on CORPUS; pads it to vocab_size pieces if given.

    A few lines of text cannot yield 25055 learned pieces, so the full-size
    vocabulary is padded with filler word pieces added to the model proto.
    Returns the final vocabulary size.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory() as scratch:
        text = Path(scratch) / "corpus.txt"
        text.write_text("\n".join(CORPUS * 4) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(text), model_prefix=str(Path(scratch) / "sp"), model_type="unigram",
            vocab_size=120, hard_vocab_limit=False, character_coverage=1.0,
            user_defined_symbols=SPECIAL_TOKENS, minloglevel=2,
        )
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString((Path(scratch) / "sp.model").read_bytes())
    if vocab_size is not None:
        for index in range(vocab_size - len(proto.pieces)):
            piece = proto.pieces.add()
            piece.piece, piece.score = f"\u2581w{index}", -100.0 - index * 1e-3
            piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
    path.write_bytes(proto.SerializeToString())
    return len(proto.pieces)


def write_cmvn(path: Path, dim: int = INPUT_SIZE) -> None:
    """Writes am.mvn in Kaldi nnet text form: a shift near typical log-mel means, a rescale."""
    shift = " ".join(f"{-10.0 + 4.0 * i / dim:.4f}" for i in range(dim))
    scale = " ".join("0.2500" for _ in range(dim))
    path.write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {scale} ]\n</Nnet>\n",
        encoding="utf-8")


def write_weights(path: Path, config: dict, vocab_size: int, seed: int) -> int:
    """Builds funasr's own SenseVoiceSmall module with seeded random init; saves its state_dict.

    Returns the parameter count.
    """
    import torch
    from funasr.models.sense_voice.model import SenseVoiceSmall

    torch.manual_seed(seed)
    model = SenseVoiceSmall(
        specaug=config["specaug"], specaug_conf=config["specaug_conf"],
        encoder=config["encoder"], encoder_conf=config["encoder_conf"],
        ctc_conf=config["ctc_conf"], input_size=INPUT_SIZE, vocab_size=vocab_size,
        **config["model_conf"])
    torch.save(model.state_dict(), path)
    return sum(parameter.numel() for parameter in model.parameters())


def make_model(directory: str | Path, full_size: bool = False, seed: int = 0) -> Path:
    """Writes the whole model directory and returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = build_config(full_size)
    vocab_size = write_tokenizer(directory / TOKENIZER_FILE,
                                 FULL_VOCAB_SIZE if full_size else None)
    write_cmvn(directory / "am.mvn")
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False),
                                           encoding="utf-8")
    # The hub repository's layout: funasr resolves these relative to the directory.
    (directory / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "auto-speech-recognition",
        "model": {"type": "funasr"}, "pipeline": {"type": "funasr-pipeline"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"bpemodel": TOKENIZER_FILE},
                            "frontend_conf": {"cmvn_file": "am.mvn"}},
    }, indent=2) + "\n", encoding="utf-8")
    parameters = write_weights(directory / "model.pt", config, vocab_size, seed)
    (directory / "README.txt").write_text(
        f"Random-weight SenseVoice-architecture model ({'full-size' if full_size else 'tiny'}, "
        f"seed {seed}, vocab {vocab_size}, {parameters:,} parameters) built by "
        "scripts/make_tiny_model.py. Its transcripts are noise.\n", encoding="utf-8")
    return directory


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="where to write the model (created if missing)")
    parser.add_argument("--full-size", action="store_true",
                        help="SenseVoiceSmall's real shape (about 234M parameters, ~900 MB)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")
    args = parser.parse_args(argv)
    print(make_model(args.directory, full_size=args.full_size, seed=args.seed))


if __name__ == "__main__":
    main()
