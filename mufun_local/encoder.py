"""Whisper encoder on CTranslate2, returning hidden states 0, 7, 15 and 32.

Hidden state 0 (conv1 -> GELU -> conv2/stride 2 -> GELU -> + positions) is computed here in
numpy; the 32 layers run as three CTranslate2 models written by the converter (see
mufun_local/convert/encoder.py for how segments A and B return un-normalised states).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import erf

from .errors import ModelError

COMPUTE_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                 "float16", "bfloat16", "float32")


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, in place."""
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


def default_compute_type(device: str) -> str:
    return "float16" if device == "cuda" else "int8"


@dataclass
class HiddenStates:
    hs0: np.ndarray
    hs7: np.ndarray
    hs15: np.ndarray
    hs32: np.ndarray

    def as_list(self) -> list[np.ndarray]:
        return [self.hs0, self.hs7, self.hs15, self.hs32]


class Encoder:
    """Loads `encoder/` from a converted model directory."""

    def __init__(self, encoder_dir: str | Path, device: str = "auto", compute_type: str | None = None,
                 threads: int = 0, batch_size: int = 4):
        import ctranslate2

        self.dir = Path(encoder_dir)
        try:
            self.info = json.loads((self.dir / "encoder.json").read_text())
            fe = np.load(self.dir / "frontend.npz")
            self.w1 = np.ascontiguousarray(fe["conv1_weight"].reshape(fe["conv1_weight"].shape[0], -1).T)
            self.b1 = fe["conv1_bias"]
            self.w2 = np.ascontiguousarray(fe["conv2_weight"].reshape(fe["conv2_weight"].shape[0], -1).T)
            self.b2 = fe["conv2_bias"]
            self.positions = fe["positions"]
            self.mel_filters = fe["mel_filters"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"{self.dir}: encoder files missing or damaged ({exc})") from None
        self.device = resolve_device(device)
        self.compute_type = compute_type or default_compute_type(self.device)
        if self.compute_type not in COMPUTE_TYPES:
            raise ModelError(f"compute type {self.compute_type!r}: choose from {', '.join(COMPUTE_TYPES)}")
        self.d = int(self.info["d_model"])
        self.offset = float(self.info["mean_offset"])
        self.batch_size = max(1, batch_size)
        self.segments = []
        for seg in self.info["segments"]:
            try:
                model = ctranslate2.models.Wav2Vec2(str(self.dir / seg["dir"]), device=self.device,
                                                    compute_type=self.compute_type, intra_threads=threads)
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"{self.dir / seg['dir']}: cannot load ({str(exc).splitlines()[0]})") from None
            self.segments.append((model, bool(seg["raw_output"])))

    # -- host front end
    def front_end(self, mel: np.ndarray) -> np.ndarray:
        """[B, n_mels, 3000] log-mel -> hidden state 0 [B, 1500, d]."""
        B, C, T = mel.shape
        x = np.zeros((B, C, T + 2), np.float32)
        x[:, :, 1:-1] = mel
        cols = np.lib.stride_tricks.sliding_window_view(x, 3, axis=2)  # [B, C, T, 3]
        cols = cols.transpose(0, 2, 1, 3).reshape(B, T, C * 3)
        h = gelu(cols @ self.w1 + self.b1)                               # [B, T, d]
        hp = np.zeros((B, T + 2, self.d), np.float32)
        hp[:, 1:-1] = h
        cols = np.lib.stride_tricks.sliding_window_view(hp, 3, axis=1)[:, 0:T:2]  # [B, T/2, d, 3]
        h2 = gelu(cols.reshape(B, T // 2, self.d * 3) @ self.w2 + self.b2)
        h2 += self.positions[: T // 2]
        return h2

    def _run(self, model, x: np.ndarray) -> np.ndarray:
        import ctranslate2
        out = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(x)), to_cpu=True)
        return np.asarray(out, dtype=np.float32)

    def _raw_segment(self, model, h: np.ndarray) -> np.ndarray:
        widened = np.empty(h.shape[:-1] + (self.d + 1,), np.float32)
        widened[..., :self.d] = h
        np.mean(h, axis=-1, out=widened[..., self.d])
        o = self._run(model, widened)
        body = o[..., :self.d]
        scale = self.offset / (o[..., self.d] - body.mean(axis=-1))
        body *= scale[..., None]
        return np.ascontiguousarray(body)

    def hidden_states(self, mel: np.ndarray) -> HiddenStates:
        """Hidden states 0/7/15/32, each [B, 1500, d] float32, batched by `batch_size`."""
        mel = np.asarray(mel, dtype=np.float32)
        if mel.ndim != 3:
            raise ValueError("expected log-mel windows [B, n_mels, 3000]")
        parts = [self._hidden_batch(mel[i:i + self.batch_size])
                 for i in range(0, len(mel), self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        return HiddenStates(*(np.concatenate(x) for x in zip(*(p.as_list() for p in parts))))

    def _hidden_batch(self, mel: np.ndarray) -> HiddenStates:
        states = [self.front_end(mel)]
        for model, raw in self.segments:
            h = states[-1]
            states.append(self._raw_segment(model, h) if raw else self._run(model, h))
        return HiddenStates(*states)
