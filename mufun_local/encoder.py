"""The Whisper encoder behind one interface: hidden states 0, 7, 15 and 32 per log-mel window.

Backends (each in its own module, loaded only when used):

    ctranslate2   encoder/seg0..2 (three CTranslate2 models), CPU or CUDA     encoder_ct2.py
    onnxruntime   encoder/onnx/*.onnx on ONNX Runtime, CPU: float32, int8     encoder_onnx.py
    openvino      the same ONNX graph on OpenVINO, CPU: float32, bfloat16     encoder_onnx.py

`auto` (encoder_choice.py) picks among what is installed and converted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError

BACKENDS = ("ctranslate2", "onnxruntime", "openvino")
# The artifact each backend reads, as the converter's --encoder-backends names it.
ARTIFACT = {"ctranslate2": "ctranslate2", "onnxruntime": "onnx", "openvino": "onnx"}
COMPUTE_TYPES = {
    "ctranslate2": ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                    "float16", "bfloat16", "float32"),
    "onnxruntime": ("int8", "float32"),
    "openvino": ("bfloat16", "float32"),
}


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, in place."""
    from scipy.special import erf  # here: the CLI imports this module for its option lists
    t = erf(x * np.float32(1 / np.sqrt(2)))
    t += 1.0
    x *= t
    x *= 0.5
    return x


def cuda_available() -> bool:
    import ctranslate2
    try:
        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # a CPU-only build can raise instead of answering 0
        return False


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ModelError("--device cuda: no CUDA device is visible to CTranslate2 "
                         "(install its CUDA build and a driver, or use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"unknown device {device!r}: use cpu, cuda or auto")
    return device


def default_compute_type(device: str, backend: str = "ctranslate2") -> str:
    """The most accurate type no less accurate than the original's bfloat16 run (DESIGN §8,
    first-step logits vs float32 on a 112 s song: original bf16 0.24, OpenVINO bf16 0.015,
    float32 exact; int8 0.49, so int8 is only ever asked for, never a default)."""
    if backend == "openvino":
        from .encoder_onnx import openvino_bf16
        return "bfloat16" if openvino_bf16() else "float32"
    return "float16" if device == "cuda" else "float32"


@dataclass
class HiddenStates:
    hs0: np.ndarray
    hs7: np.ndarray
    hs15: np.ndarray
    hs32: np.ndarray

    def as_list(self) -> list[np.ndarray]:
        return [self.hs0, self.hs7, self.hs15, self.hs32]


class EncoderBase:
    """Reads encoder/encoder.json and frontend.npz; batches windows for `_hidden_batch`."""

    backend = ""

    def __init__(self, encoder_dir: str | Path, device: str, compute_type: str | None, batch_size: int):
        self.dir = Path(encoder_dir)
        try:
            self.info = json.loads((self.dir / "encoder.json").read_text())
            self.frontend = np.load(self.dir / "frontend.npz")
            self.mel_filters = self.frontend["mel_filters"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"{self.dir}: encoder files missing or damaged ({exc})") from None
        self.device = device
        self.compute_type = compute_type or default_compute_type(device, self.backend)
        if self.compute_type not in COMPUTE_TYPES[self.backend]:
            raise ModelError(f"compute type {self.compute_type!r} on {self.backend}: choose from "
                             f"{', '.join(COMPUTE_TYPES[self.backend])}")
        self.d = int(self.info["d_model"])
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


def converted_backends(encoder_dir: str | Path) -> list[str]:
    """The backends whose artifacts this model directory holds."""
    try:
        info = json.loads((Path(encoder_dir) / "encoder.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{encoder_dir}: encoder files missing or damaged ({exc})") from None
    written = set(info.get("artifacts", ["ctranslate2"]))
    return [b for b in BACKENDS if ARTIFACT[b] in written]


def load_encoder(encoder_dir: str | Path, backend: str, device: str = "cpu", compute_type: str | None = None,
                 threads: int = 0, batch_size: int = 4) -> EncoderBase:
    """One concrete backend (not `auto`: see encoder_choice.choose)."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown encoder backend {backend!r}: choose from auto, {', '.join(BACKENDS)}")
    if backend not in converted_backends(encoder_dir):
        raise ModelError(f"this model has no {ARTIFACT[backend]} encoder for --encoder-backend {backend}; "
                         f"convert it again with --encoder-backends ctranslate2,{ARTIFACT[backend]}")
    if backend == "ctranslate2":
        from .encoder_ct2 import CT2Encoder
        return CT2Encoder(encoder_dir, device, compute_type, threads, batch_size)
    if device == "cuda":
        raise ModelError(f"--encoder-backend {backend} runs on the CPU here; use --device cpu "
                         f"or --encoder-backend ctranslate2 for CUDA")
    from .encoder_onnx import OnnxRuntimeEncoder, OpenVinoEncoder
    cls = OnnxRuntimeEncoder if backend == "onnxruntime" else OpenVinoEncoder
    return cls(encoder_dir, device, compute_type, threads, batch_size)
