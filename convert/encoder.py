"""The encoder's artifacts: encoder/{frontend.npz, encoder.json} and each engine's files,
written by its own writer (encoder_ct2.py: CTranslate2 segments; encoder_onnx.py: the ONNX
graph for ONNX Runtime and OpenVINO)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mufun_local.features import mel_filters

from . import tensors
from .encoder_ct2 import ENCODER_QUANTS, write_ct2_segments
from .tensors import FEATURE_LAYERS, segment_bounds

ENCODER_ARTIFACTS = ("ctranslate2", "onnx")


def write_encoder(ckpt, out_dir: Path, quant: str = "float16", artifacts=("ctranslate2",), progress=None,
                  onnx_int8: bool = False) -> dict:
    """Write encoder/{frontend.npz, encoder.json} and each artifact asked for: seg0..2/
    (CTranslate2, stored as `quant`) and onnx/ (the float32 graph, and with `onnx_int8` ONNX
    Runtime's int8 one). Returns encoder.json."""
    if quant not in ENCODER_QUANTS:
        raise ValueError(f"encoder quantization {quant!r}: choose from {', '.join(ENCODER_QUANTS)}")
    unknown = set(artifacts) - set(ENCODER_ARTIFACTS)
    if unknown or not artifacts:
        raise ValueError(f"encoder backends {sorted(unknown) or 'none'}: choose from {', '.join(ENCODER_ARTIFACTS)}")
    d = ckpt.dims
    out_dir.mkdir(parents=True, exist_ok=True)
    e = tensors.enc
    np.savez(out_dir / "frontend.npz",
             conv1_weight=ckpt.get(e("conv1.weight")), conv1_bias=ckpt.get(e("conv1.bias")),
             conv2_weight=ckpt.get(e("conv2.weight")), conv2_bias=ckpt.get(e("conv2.bias")),
             positions=ckpt.get(e("embed_positions.weight")),
             mel_filters=mel_filters(d.n_mels))
    n_segments = len(segment_bounds(d.enc_layers))
    steps = (n_segments if "ctranslate2" in artifacts else 0) + ((3 if onnx_int8 else 1) if "onnx" in artifacts else 0)
    done = 0
    info = {
        "d_model": d.enc_d, "layers": d.enc_layers, "n_mels": d.n_mels, "positions": d.enc_positions,
        "feature_layers": list(FEATURE_LAYERS), "artifacts": [a for a in ENCODER_ARTIFACTS if a in artifacts],
    }

    def step(k: int) -> None:
        if progress:
            progress(done + k, steps)
    if "ctranslate2" in artifacts:
        info.update(write_ct2_segments(ckpt, out_dir, quant, step))
        done += n_segments
    if "onnx" in artifacts:
        from .encoder_onnx import write_onnx_encoder
        files = write_onnx_encoder(ckpt, out_dir / "onnx", lambda k, n: step(k), int8=onnx_int8)
        info["onnx"] = {ct: f"onnx/{name}" for ct, name in files.items()}
    (out_dir / "encoder.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
