"""Pooling + connector MLP: hidden states -> one LLM embedding per 0.1 s of audio.

concat(hs0, hs7, hs15, hs32) -> AvgPool1d(5, 5) over time -> Linear -> GELU (erf) -> Linear.
Pooling is linear, so each hidden state is pooled before the concat (a fifth of the
memory). numpy + BLAS on CPU; torch on CUDA when the `cuda` extra is installed and asked for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..devices import torch_cuda
from .base import HiddenStates, gelu
from ..errors import ModelError, first_line


def pool(hs: np.ndarray, stride: int) -> np.ndarray:
    """AvgPool1d(stride, stride) over axis 1 of [B, T, d] (a trailing remainder is dropped)."""
    B, T, d = hs.shape
    t = T // stride
    return hs[:, : t * stride].reshape(B, t, stride, d).mean(axis=2, dtype=np.float32)


class Connector:
    def __init__(self, path: str | Path, pool_stride: int, device: str = "cpu"):
        from safetensors.numpy import load_file

        try:
            w = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ModelError(f"{path}: cannot read connector ({first_line(exc)})") from None
        self.stride = pool_stride
        # [in, out] views of torch's [out, in] weights: BLAS reads them transposed, no copy
        self.w1 = w["linear1.weight"].T
        self.b1 = w["linear1.bias"]
        self.w2 = w["linear2.weight"].T
        self.b2 = w["linear2.bias"]
        self.hidden = self.w2.shape[1]
        self.device = device
        self._torch = None
        if device == "cuda":
            try:
                import torch
            except ImportError:
                raise ModelError("the CUDA connector needs torch: pip install 'mufun-local[cuda]'") from None
            if not torch_cuda():
                raise ModelError("the CUDA connector needs a CUDA build of torch and a GPU")
            dev = torch.device("cuda")
            self._torch = {k: torch.from_numpy(v).to(dev) for k, v in
                           (("w1", self.w1), ("b1", self.b1), ("w2", self.w2), ("b2", self.b2))}

    def pooled(self, hs: HiddenStates) -> np.ndarray:
        return np.concatenate([pool(h, self.stride) for h in hs.as_list()], axis=-1)

    def __call__(self, hs: HiddenStates) -> np.ndarray:
        """[windows * 1500/stride, hidden] float32 audio embeddings."""
        x = self.pooled(hs)
        x = x.reshape(-1, x.shape[-1])
        if self._torch is not None:
            return self._cuda(x)
        h = x @ self.w1
        h += self.b1
        y = gelu(h) @ self.w2
        y += self.b2
        return y

    def _cuda(self, x: np.ndarray) -> np.ndarray:
        import torch
        t = self._torch
        with torch.no_grad():
            h = torch.from_numpy(x).to(t["w1"].device) @ t["w1"] + t["b1"]
            y = torch.nn.functional.gelu(h) @ t["w2"] + t["b2"]
        return y.cpu().numpy()
