"""Silero VAD v6 with its spectrogram taken by FFT instead of by the model.

faster-whisper's Silero v6 (ONNX) starts with a short-time Fourier transform
written as a convolution: 258 filters of 256 taps (a Hann-windowed DFT,
real and imaginary halves) slid over each 32 ms window, then a magnitude.
That convolution is about 45% of the model's CPU time. The same magnitudes
come from numpy and scipy's FFT for a seventh of the cost, so this module
cuts the graph after the magnitude (`SPECTRUM`) and feeds the rest of the
network with the FFT's result: the speech probabilities are the model's own
to float32 rounding (checked at load), in less CPU time
(`make bench ARGS="--only vad"`).

The cut model replaces the session inside faster-whisper's cached VAD model
(`get_vad_model().session`), so its segmenting logic (`get_speech_timestamps`)
is used as it is. If a future faster-whisper ships a model this cut does not
fit, the check at load fails and the original session stays.
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

WINDOW, CONTEXT = 512, 64            # samples per model step, and the context before it
FFT_SIZE, HOP, FRAMES = 256, 128, 4  # the model's STFT: 4 frames of each 576-sample input
# The output of the graph's magnitude node: (steps, 129 frequencies, 4 frames).
SPECTRUM = "/encoder/feature_extractor/Sqrt_output_0"
HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FFT_SIZE) / FFT_SIZE)).astype(np.float32)
# Model steps per onnxruntime call (16 s of audio).
STEPS_PER_CALL = 512
# Largest difference allowed between the probabilities of the two paths.
AGREEMENT = 1e-4


def spectrum(steps: np.ndarray) -> np.ndarray:
    """The model's STFT magnitudes of (n, 576) inputs: the graph pads 128
    samples each side by reflection and drops its first frame, so frames
    start at 0, 128, 256 and 384, the last one reaching 64 samples into the
    reflected right edge."""
    import scipy.fft

    padded = np.pad(steps, ((0, 0), (0, FFT_SIZE // 2 - CONTEXT)), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, FFT_SIZE, axis=1)[:, ::HOP][:, :FRAMES]
    magnitudes = np.abs(scipy.fft.rfft(frames * HANN, axis=-1))
    return np.ascontiguousarray(magnitudes.transpose(0, 2, 1), dtype=np.float32)


class SpectrumFirstSession:
    """Runs like the onnxruntime session it replaces (`run(None, feeds)` with
    the model's `input`, `h` and `c`), computing the spectrum itself."""

    def __init__(self, model_path: str):
        import onnx
        import onnxruntime

        graph_model = onnx.load(model_path)
        graph = graph_model.graph
        cut = next(index for index, node in enumerate(graph.node) if SPECTRUM in node.output)
        rest = list(graph.node[cut + 1:])
        del graph.node[:]
        graph.node.extend(rest)
        state_inputs = [value for value in graph.input if value.name != "input"]
        del graph.input[:]
        graph.input.extend([onnx.helper.make_tensor_value_info(SPECTRUM, onnx.TensorProto.FLOAT,
                                                               ["steps", FFT_SIZE // 2 + 1, FRAMES]),
                            *state_inputs])
        used = {name for node in graph.node for name in node.input}
        weights = [tensor for tensor in graph.initializer if tensor.name in used]
        del graph.initializer[:]
        graph.initializer.extend(weights)
        options = onnxruntime.SessionOptions()
        # One thread, as faster-whisper gives its own session: each handler
        # thread's VAD takes one core and they run side by side.
        options.inter_op_num_threads = options.intra_op_num_threads = 1
        options.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(graph_model.SerializeToString(),
                                                    providers=["CPUExecutionProvider"], sess_options=options)

    def run(self, output_names, feeds: dict) -> list:
        """The model's outputs (probabilities, h, c) for up to 10,000 steps,
        run STEPS_PER_CALL at a time with the LSTM state carried from one
        call to the next, which is the same computation: each call's
        activations then fit in the CPU's cache (about 12% faster than one
        call for all)."""
        steps, h, c = feeds["input"], feeds["h"], feeds["c"]
        probabilities = []
        for start in range(0, len(steps), STEPS_PER_CALL):
            chunk = spectrum(steps[start:start + STEPS_PER_CALL])
            out, h, c = self.session.run(output_names, {SPECTRUM: chunk, "h": h, "c": c})
            probabilities.append(out)
        return [np.concatenate(probabilities) if probabilities else np.zeros(0, np.float32), h, c]


def agreement(original, replacement, seconds: float = 8.0) -> float:
    """Largest difference in speech probability between two sessions on the
    same noise-and-tone signal."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    signal = (0.3 * np.sin(2 * np.pi * 220 * t) * (t % 2 < 1) + 0.05 * rng.standard_normal(t.size))
    steps = signal.astype(np.float32).reshape(-1, WINDOW)
    with_context = np.concatenate([np.roll(steps[:, -CONTEXT:], 1, axis=0), steps], axis=1)
    state = np.zeros((1, 1, 128), np.float32)
    feeds = {"input": with_context, "h": state, "c": state}
    return float(np.abs(original.run(None, feeds)[0] - replacement.run(None, feeds)[0]).max())


def speed_up_vad() -> bool:
    """Puts the spectrum-first session into faster-whisper's cached VAD
    model; True when it is in use (now or already)."""
    from faster_whisper.utils import get_assets_path
    from faster_whisper.vad import get_vad_model

    model = get_vad_model()
    if isinstance(model.session, SpectrumFirstSession):
        return True
    try:
        replacement = SpectrumFirstSession(os.path.join(get_assets_path(), "silero_vad_v6.onnx"))
        difference = agreement(model.session, replacement)
    except Exception as error:  # noqa: BLE001 - an optimisation: whatever fails, the shipped model still works
        log.warning("VAD: the FFT spectrum cannot replace the model's (%s); using the model as shipped", error)
        return False
    if difference > AGREEMENT:
        log.warning("VAD: the FFT spectrum differs from the model's by %.2g; using the model as shipped",
                    difference)
        return False
    model.session = replacement
    return True
