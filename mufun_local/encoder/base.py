"""The Whisper encoder behind one interface: hidden states 0, 7, 15 and 32 per log-mel window.

A leaf module: the engines subclass `EncoderBase` in their own modules, which the registry
(encoder_backends.py) loads only when used:

    ctranslate2   encoder/seg0..2 (three CTranslate2 models), CPU or CUDA     encoder_ct2.py
    onnxruntime   encoder/onnx/*.onnx on ONNX Runtime, CPU: float32, int8     encoder_onnx.py
    openvino      the same ONNX graph on OpenVINO, CPU: float32, bfloat16     encoder_onnx.py

`auto` (encoder_choice.py) picks among what is installed and converted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..format.encoder_dir import EncoderDir


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, in place (Whisper's conv stem and the connector use it)."""
    from scipy.special import erf  # here: the CLI imports the registry for its option lists
    t = erf(x * np.float32(1 / np.sqrt(2)))
    t += 1.0
    x *= t
    x *= 0.5
    return x


@dataclass
class HiddenStates:
    hs0: np.ndarray
    hs7: np.ndarray
    hs15: np.ndarray
    hs32: np.ndarray

    def as_list(self) -> list[np.ndarray]:
        return [self.hs0, self.hs7, self.hs15, self.hs32]


class EncoderBase:
    """The model's encoder files (format.encoder_dir); batches windows for `_hidden_batch`."""

    backend = ""

    def __init__(self, encoder_dir: str | Path, device: str, compute_type: str, batch_size: int):
        """`device` and `compute_type` as the registry resolved and checked them."""
        self.files = EncoderDir(encoder_dir)
        self.dir = self.files.path
        self.mel_filters = self.files.mel_filters
        self.device = device
        self.compute_type = compute_type
        self.d = self.files.d_model
        self.batch_size = max(1, batch_size)

    def describe(self) -> str:
        return f"{self.backend} on {self.device}, {self.compute_type}"

    def hidden_states(self, mel: np.ndarray, on_batch=None) -> HiddenStates:
        """Hidden states 0/7/15/32, each [B, 1500, d] float32, batched by `batch_size`;
        `on_batch(windows done)` after each batch."""
        mel = np.asarray(mel, dtype=np.float32)
        if mel.ndim != 3:
            raise ValueError("expected log-mel windows [B, n_mels, 3000]")
        parts = []
        for i in range(0, len(mel), self.batch_size):
            parts.append(self._hidden_batch(mel[i:i + self.batch_size]))
            if on_batch is not None:
                on_batch(min(len(mel), i + self.batch_size))
        if len(parts) == 1:
            return parts[0]
        return HiddenStates(*(np.concatenate(x) for x in zip(*(p.as_list() for p in parts))))

    def _hidden_batch(self, mel: np.ndarray) -> HiddenStates:
        raise NotImplementedError
