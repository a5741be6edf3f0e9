"""The CTranslate2 encoder backend.

Hidden state 0 (conv1 -> GELU -> conv2/stride 2 -> GELU -> + positions) is computed here in
numpy; the 32 layers run as three CTranslate2 models written by the converter (see
convert/encoder_ct2.py for how segments A and B return un-normalised states).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import EncoderBase, HiddenStates, gelu
from ..errors import ModelError, first_line


class CT2Encoder(EncoderBase):
    backend = "ctranslate2"

    def __init__(self, encoder_dir: str | Path, device: str, compute_type: str, threads: int = 0, batch_size: int = 4):
        import ctranslate2

        super().__init__(encoder_dir, device, compute_type, batch_size)
        f = self.files
        w1, w2 = f.array("conv1_weight"), f.array("conv2_weight")
        self.w1 = np.ascontiguousarray(w1.reshape(w1.shape[0], -1).T)
        self.b1 = f.array("conv1_bias")
        self.w2 = np.ascontiguousarray(w2.reshape(w2.shape[0], -1).T)
        self.b2 = f.array("conv2_bias")
        self.positions = f.array("positions")
        self.offset = f.mean_offset
        self.segments = []
        for folder, raw in f.segments:
            try:
                model = ctranslate2.models.Wav2Vec2(str(folder), device=self.device,
                                                    compute_type=self.compute_type, intra_threads=threads)
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"{folder}: cannot load ({first_line(exc)})") from None
            self.segments.append((model, raw))

    # -- the conv stem (hidden state 0), on the host
    def conv_stem(self, mel: np.ndarray) -> np.ndarray:
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

    def _hidden_batch(self, mel: np.ndarray) -> HiddenStates:
        states = [self.conv_stem(mel)]
        for model, raw in self.segments:
            h = states[-1]
            states.append(self._raw_segment(model, h) if raw else self._run(model, h))
        return HiddenStates(*states)
