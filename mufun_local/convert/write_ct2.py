"""The CTranslate2 encoder writer: Whisper as three CTranslate2 models exposing hidden states 0/7/15/32.

CTranslate2's Whisper ``encode()`` returns only the last layer. Its Wav2Vec2 encoder without
a feature extractor is a plain stack of pre-norm GELU transformer layers over float input
[batch, time, dim] followed by an output norm, so the 32 Whisper layers become three such
models: layers [0,7) -> hs7, [7,15) -> hs15, [15,32) + Whisper's final LayerNorm -> hs32.
Hidden state 0 (the conv stem + positions) is computed on the host from `frontend.npz`.

Segments A and B must return their residual stream *before* a norm, but the model always
ends in one. They are widened by one channel that carries the token mean m (input
[x, mean(x)]): inside each LayerNorm the mean is unchanged and the variance scales by
d/(d+1), so gamma is multiplied by sqrt(d/(d+1)) and eps by d/(d+1); the new channel
normalises to 0 (its gamma, beta and the weight columns that read it are 0); every output
projection gets an extra row equal to the mean of its rows (bias likewise), so the channel
keeps tracking the mean; the last layer adds V to the channel's bias, and the output norm is
an RMS norm with gamma 1. The runtime recovers h = o[:, :d] * V / (o[:, d] - mean(o[:, :d])).
Exact up to float rounding; the extra cost is 1/d of the compute.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mufun_local.format import checkpoint as layout
from mufun_local.format.encoder_dir import CT2_STORED
from mufun_local.format.checkpoint import segment_bounds

# The channel offset V. Large against the token mean (no cancellation when it is
# subtracted back), small enough that o[:, :d] = x / rms stays a normal float16 number.
MEAN_OFFSET = 1.0e4
ENCODER_QUANTS = tuple(CT2_STORED)


def _widen_in(w: np.ndarray) -> np.ndarray:
    """A weight [out, d] that reads a normalised input -> [out, d+1] (extra column 0)."""
    return np.concatenate([w, np.zeros((w.shape[0], 1), w.dtype)], axis=1)


def _widen_out(w: np.ndarray, b: np.ndarray, extra_bias: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """An output projection [d, in] -> [d+1, in] whose extra row keeps the mean channel."""
    w2 = np.concatenate([w, w.mean(axis=0, keepdims=True)], axis=0)
    b2 = np.concatenate([b, [b.mean() + extra_bias]]).astype(np.float32)
    return w2, b2


def build_segment(get, d_heads: int, layers: range, d: int, eps: float, raw_output: bool,
                  final_norm: tuple[np.ndarray, np.ndarray] | None):
    """A CTranslate2 Wav2Vec2Spec for Whisper layers `layers` (tensors from `get`)."""
    from ctranslate2.specs import common_spec, wav2vec2_spec

    spec = wav2vec2_spec.Wav2Vec2Spec(feat_layers=1, num_layers=len(layers), num_heads=d_heads,
                                      vocab_size=1, return_hidden=True)
    enc = spec.encoder
    # No feature extractor: the C++ encoder then runs only the layers and the output norm.
    for name in ("feat_layer0", "feat_layer", "fp_layer_norm", "fp_projection", "pos_conv_embed"):
        delattr(enc, name)
    ln_scale = math.sqrt(d / (d + 1)) if raw_output else 1.0

    def norm(spec_norm, gamma, beta):
        # copies: CTranslate2's optimize() quantises assigned arrays in place
        if raw_output:
            spec_norm.gamma = np.concatenate([gamma * ln_scale, [0.0]]).astype(np.float32)
            spec_norm.beta = np.concatenate([beta, [0.0]]).astype(np.float32)
        else:
            spec_norm.gamma, spec_norm.beta = gamma.copy(), beta.copy()

    for j, i in enumerate(layers):
        p = layout.enc_layer(i, "")
        L = enc.layer[j]
        att, ffn = L.self_attention, L.ffn
        norm(att.layer_norm, get(p + "self_attn_layer_norm.weight"), get(p + "self_attn_layer_norm.bias"))
        qkv_w = np.concatenate([get(p + "self_attn.q_proj.weight"), get(p + "self_attn.k_proj.weight"),
                                get(p + "self_attn.v_proj.weight")])
        qkv_b = np.concatenate([get(p + "self_attn.q_proj.bias"), np.zeros(d, np.float32),
                                get(p + "self_attn.v_proj.bias")])
        out_w, out_b = get(p + "self_attn.out_proj.weight"), get(p + "self_attn.out_proj.bias")
        norm(ffn.layer_norm, get(p + "final_layer_norm.weight"), get(p + "final_layer_norm.bias"))
        fc1_w, fc1_b = get(p + "fc1.weight"), get(p + "fc1.bias")
        fc2_w, fc2_b = get(p + "fc2.weight"), get(p + "fc2.bias")
        if raw_output:
            qkv_w, fc1_w = _widen_in(qkv_w), _widen_in(fc1_w)
            out_w, out_b = _widen_out(out_w, out_b)
            last = j == len(layers) - 1
            fc2_w, fc2_b = _widen_out(fc2_w, fc2_b, MEAN_OFFSET if last else 0.0)
        att.linear[0].weight, att.linear[0].bias = qkv_w, qkv_b
        att.linear[1].weight, att.linear[1].bias = out_w, out_b
        ffn.linear_0.weight, ffn.linear_0.bias = fc1_w, fc1_b
        ffn.linear_1.weight, ffn.linear_1.bias = fc2_w, fc2_b

    if raw_output:
        enc.layer_norm = common_spec.LayerNormSpec(rms_norm=True)
        enc.layer_norm.gamma = np.ones(d + 1, np.float32)
        spec.config.add_attribute("layer_norm_epsilon", eps * d / (d + 1))
    else:
        enc.layer_norm.gamma, enc.layer_norm.beta = final_norm[0].copy(), final_norm[1].copy()
        spec.config.add_attribute("layer_norm_epsilon", eps)
    spec.register_vocabulary(["<unk>"])
    return spec


def write_ct2_segments(ckpt, out_dir: Path, quant: str, progress=None) -> dict:
    """encoder/seg0..2, stored as `quant`; returns their part of encoder.json.
    `progress(k)` after each segment."""
    d = ckpt.dims
    e = layout.enc
    final = (ckpt.get(e("layer_norm.weight")), ckpt.get(e("layer_norm.bias")))
    bounds = segment_bounds(d.enc_layers)
    segments = []
    for k, (a, b) in enumerate(bounds):
        raw = k < len(bounds) - 1
        spec = build_segment(ckpt.get, d.enc_heads, range(a, b), d.enc_d, d.enc_ln_eps, raw, None if raw else final)
        spec.validate()
        spec.optimize(quantization=quant)
        (out_dir / f"seg{k}").mkdir(exist_ok=True)
        spec.save(str(out_dir / f"seg{k}"))
        segments.append({"dir": f"seg{k}", "layers": [a, b], "raw_output": raw})
        if progress:
            progress(k + 1)
    return {"mean_offset": MEAN_OFFSET, "stored_quantization": quant, "segments": segments}
