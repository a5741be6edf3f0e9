"""The encoder's artifacts: encoder/{frontend.npz, encoder.json} and each engine's files,
written by its own writer (encoder_ct2.py: CTranslate2 segments; encoder_onnx.py: the ONNX
graph for ONNX Runtime and OpenVINO)."""
from __future__ import annotations

from pathlib import Path

from mufun_local.format.encoder_dir import ARTIFACTS as ENCODER_ARTIFACTS
from mufun_local.format.encoder_dir import FEATURE_LAYERS, EncoderDir, slaney_mel_filters

from mufun_local.format import checkpoint as layout
from .write_ct2 import ENCODER_QUANTS, write_ct2_segments
from mufun_local.format.checkpoint import segment_bounds


def _write_ct2(ckpt, out_dir: Path, quant: str, onnx_int8: bool, step) -> dict:
    return write_ct2_segments(ckpt, out_dir, quant, step)


def _write_onnx(ckpt, out_dir: Path, quant: str, onnx_int8: bool, step) -> dict:
    from .write_onnx import write_onnx_encoder
    files = write_onnx_encoder(ckpt, out_dir / "onnx", lambda k, n: step(k), int8=onnx_int8)
    return {"onnx": {ct: f"onnx/{name}" for ct, name in files.items()}}


# Each artifact's writer (format.encoder_dir.ARTIFACTS): (ckpt, encoder dir, CTranslate2 stored
# type, --onnx-int8, step(k)) -> its part of encoder.json; and how many progress steps it takes
WRITERS = {"ctranslate2": (_write_ct2, lambda d, int8: len(segment_bounds(d.enc_layers))),
           "onnx": (_write_onnx, lambda d, int8: 3 if int8 else 1)}


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
    folder = EncoderDir(out_dir)
    e = layout.enc
    folder.write_frontend(conv1_weight=ckpt.get(e("conv1.weight")), conv1_bias=ckpt.get(e("conv1.bias")),
                          conv2_weight=ckpt.get(e("conv2.weight")), conv2_bias=ckpt.get(e("conv2.bias")),
                          positions=ckpt.get(e("embed_positions.weight")), mel_filters=slaney_mel_filters(d.n_mels))
    written = [a for a in ENCODER_ARTIFACTS if a in artifacts]
    steps = sum(WRITERS[a][1](d, onnx_int8) for a in written)
    info = {
        "d_model": d.enc_d, "layers": d.enc_layers, "n_mels": d.n_mels, "positions": d.enc_positions,
        "feature_layers": list(FEATURE_LAYERS), "artifacts": written,
    }
    done = 0
    for a in written:
        write, n_steps = WRITERS[a]
        info.update(write(ckpt, out_dir, quant, onnx_int8, lambda k, base=done: progress and progress(base + k, steps)))
        done += n_steps(d, onnx_int8)
    folder.write_info(info)
    return info
