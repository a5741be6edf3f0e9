"""The connector MLP (Linear-GELU-Linear) as float32 safetensors; pooling lives in the manifest."""
from __future__ import annotations

from pathlib import Path

from mufun_local.format.checkpoint import connector

POOL_STRIDE = 5  # AvgPool1d(5, 5) of the original's whisper tower: 1500 -> 300 per window

CONNECTOR_TENSORS = ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")


def write_connector(ckpt, path: Path) -> dict:
    from safetensors.numpy import save_file

    weights = {name: ckpt.get(connector(name)) for name in CONNECTOR_TENSORS}
    save_file(weights, str(path), metadata={"format": "mufun-local connector"})
    d = ckpt.dims
    return {"file": path.name, "pool_stride": POOL_STRIDE, "in": d.connector_in,
            "mid": d.connector_mid, "out": d.hidden, "activation": "gelu_erf",
            "tokens_per_window": d.enc_positions // POOL_STRIDE}
