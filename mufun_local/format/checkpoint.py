"""The original checkpoint's layout as data (as gguf-py's tensor_mapping.py does): the sizes
config.json gives (Dims), and every tensor name, in the release's order, with the shape those
sizes imply and how the synthetic generator fills it. The converter's validator, both encoder
writers, the GGUF writer and the synthetic generator read names from here and nowhere else.

MuFun (TinyLLaVA layout): `vision_tower._vision_tower.` is Whisper-large-v3's encoder in
Hugging Face names, `connector._connector.` the two-layer MLP, `language_model.` a
Qwen3ForCausalLM.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ..errors import ModelError

ENCODER = "vision_tower._vision_tower."
CONNECTOR = "connector._connector."
LLM = "language_model."


# The encoder hidden states MuFun's connector reads (0: after the conv stem and positions).
FEATURE_LAYERS = (0, 7, 15, 32)


@dataclass(frozen=True)
class Dims:
    """Every size the converter and runtime need, read from config.json."""

    enc_d: int
    enc_layers: int
    enc_heads: int
    enc_ffn: int
    n_mels: int
    enc_positions: int
    enc_ln_eps: float
    connector_in: int
    connector_mid: int
    hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    head_dim: int
    llm_ffn: int
    vocab_rows: int
    rope_theta: float
    rms_eps: float
    max_positions: int
    tokenizer_max_length: int | None


# Bounds on every size config.json gives, far beyond any real release (Qwen3-235B has 94
# layers, hidden 4096, vocab 151,936): a hostile config cannot make the converter plan
# millions of tensors or allocate without limit before the shapes are checked.
DIM_LIMITS = {"enc_d": 16384, "enc_layers": 256, "enc_heads": 256, "enc_ffn": 131072, "n_mels": 512,
              "enc_positions": 65536, "connector_in": 131072, "connector_mid": 1 << 20, "hidden": 65536,
              "llm_layers": 1024, "llm_heads": 1024, "llm_kv_heads": 1024, "head_dim": 4096, "llm_ffn": 1 << 20,
              "vocab_rows": 1 << 22, "max_positions": 1 << 24}


def check_dims(d: Dims) -> Dims:
    for name, limit in DIM_LIMITS.items():
        value = getattr(d, name)
        if not 1 <= value <= limit:
            raise ModelError(f"config.json: {name} = {value} is outside 1..{limit}")
    if d.llm_heads % d.llm_kv_heads:
        raise ModelError(f"config.json: {d.llm_heads} attention heads are not a multiple of "
                         f"{d.llm_kv_heads} key/value heads")
    return d


def dims_from_config(cfg: dict) -> Dims:
    try:
        v, t = cfg["vision_config"], cfg["text_config"]
        m = re.findall(r"(\d+)[ix]", cfg["connector_type"])
        ix, hx = (int(m[0]), int(m[1])) if len(m) == 2 else (None, None)
        if ix is None:
            raise ModelError(f"config.json: unsupported connector_type {cfg['connector_type']!r}")
        vdim = int(cfg.get("vision_hidden_size", v["d_model"])) * ix
        return check_dims(Dims(
            enc_d=int(v["d_model"]), enc_layers=int(v["encoder_layers"]),
            enc_heads=int(v["encoder_attention_heads"]), enc_ffn=int(v["encoder_ffn_dim"]),
            n_mels=int(v.get("num_mel_bins", 128)), enc_positions=int(v.get("max_source_positions", 1500)),
            enc_ln_eps=1e-5,
            connector_in=vdim, connector_mid=hx * vdim, hidden=int(t["hidden_size"]),
            llm_layers=int(t["num_hidden_layers"]), llm_heads=int(t["num_attention_heads"]),
            llm_kv_heads=int(t.get("num_key_value_heads", t["num_attention_heads"])),
            head_dim=int(t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]),
            llm_ffn=int(t["intermediate_size"]), vocab_rows=int(t["vocab_size"]),
            rope_theta=float(t.get("rope_theta", 1e6)), rms_eps=float(t.get("rms_norm_eps", 1e-6)),
            max_positions=int(t.get("max_position_embeddings", 32768)),
            tokenizer_max_length=cfg.get("tokenizer_model_max_length"),
        ))
    except (KeyError, TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        raise ModelError(f"config.json: missing or invalid key {exc}") from None


def segment_bounds(n_layers: int) -> list[tuple[int, int]]:
    """The encoder's layers between consecutive feature layers: [(0, 7), (7, 15), (15, 32)]."""
    if n_layers != FEATURE_LAYERS[-1]:
        raise ValueError(f"the encoder has {n_layers} layers; MuFun reads hidden states "
                         f"{FEATURE_LAYERS}, which needs exactly {FEATURE_LAYERS[-1]}")
    return list(zip(FEATURE_LAYERS[:-1], FEATURE_LAYERS[1:]))


def enc(name: str) -> str:
    return ENCODER + name


def enc_layer(i: int, name: str) -> str:
    return f"{ENCODER}layers.{i}.{name}"


def connector(name: str) -> str:
    return CONNECTOR + name


def llm(name: str) -> str:
    """A language-model tensor; `name` as in Qwen3 (`model.norm.weight`, `lm_head.weight`)."""
    return LLM + name


@dataclass(frozen=True)
class Tensor:
    name: str                      # full name; "{i}" for the layer index of a per-layer tensor
    shape: Callable[[object], tuple[int, ...]]   # from checkpoint.Dims
    init: str                      # synthetic.py: bias, norm, embed, positions, linear[:gain], conv

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.name


def _t(name, shape, init):
    return Tensor(name, shape, init)


_LLM_LAYER = LLM + "model.layers.{i}."
_ENC_LAYER = ENCODER + "layers.{i}."

# In the release's order (the synthetic generator writes them so): language model, connector, encoder.
LLM_TENSORS = (
    _t(llm("model.embed_tokens.weight"), lambda d: (d.vocab_rows, d.hidden), "embed"),
    _t(_LLM_LAYER + "input_layernorm.weight", lambda d: (d.hidden,), "norm"),
    _t(_LLM_LAYER + "mlp.down_proj.weight", lambda d: (d.hidden, d.llm_ffn), "linear"),
    _t(_LLM_LAYER + "mlp.gate_proj.weight", lambda d: (d.llm_ffn, d.hidden), "linear"),
    _t(_LLM_LAYER + "mlp.up_proj.weight", lambda d: (d.llm_ffn, d.hidden), "linear"),
    _t(_LLM_LAYER + "post_attention_layernorm.weight", lambda d: (d.hidden,), "norm"),
    _t(_LLM_LAYER + "self_attn.k_norm.weight", lambda d: (d.head_dim,), "norm"),
    _t(_LLM_LAYER + "self_attn.k_proj.weight", lambda d: (d.llm_kv_heads * d.head_dim, d.hidden), "linear"),
    _t(_LLM_LAYER + "self_attn.o_proj.weight", lambda d: (d.hidden, d.llm_heads * d.head_dim), "linear"),
    _t(_LLM_LAYER + "self_attn.q_norm.weight", lambda d: (d.head_dim,), "norm"),
    _t(_LLM_LAYER + "self_attn.q_proj.weight", lambda d: (d.llm_heads * d.head_dim, d.hidden), "linear"),
    _t(_LLM_LAYER + "self_attn.v_proj.weight", lambda d: (d.llm_kv_heads * d.head_dim, d.hidden), "linear"),
    _t(llm("model.norm.weight"), lambda d: (d.hidden,), "norm"),
    _t(llm("lm_head.weight"), lambda d: (d.vocab_rows, d.hidden), "linear:4.0"),
)
CONNECTOR_TENSORS = (
    _t(connector("linear1.bias"), lambda d: (d.connector_mid,), "bias"),
    _t(connector("linear1.weight"), lambda d: (d.connector_mid, d.connector_in), "linear"),
    _t(connector("linear2.bias"), lambda d: (d.hidden,), "bias"),
    _t(connector("linear2.weight"), lambda d: (d.hidden, d.connector_mid), "linear"),
)
ENCODER_TENSORS = (
    _t(enc("conv1.bias"), lambda d: (d.enc_d,), "bias"),
    _t(enc("conv1.weight"), lambda d: (d.enc_d, d.n_mels, 3), "conv"),
    _t(enc("conv2.bias"), lambda d: (d.enc_d,), "bias"),
    _t(enc("conv2.weight"), lambda d: (d.enc_d, d.enc_d, 3), "conv"),
    _t(enc("embed_positions.weight"), lambda d: (d.enc_positions, d.enc_d), "positions"),
    _t(_ENC_LAYER + "fc1.bias", lambda d: (d.enc_ffn,), "bias"),
    _t(_ENC_LAYER + "fc1.weight", lambda d: (d.enc_ffn, d.enc_d), "linear"),
    _t(_ENC_LAYER + "fc2.bias", lambda d: (d.enc_d,), "bias"),
    _t(_ENC_LAYER + "fc2.weight", lambda d: (d.enc_d, d.enc_ffn), "linear:0.5"),
    _t(_ENC_LAYER + "final_layer_norm.bias", lambda d: (d.enc_d,), "bias"),
    _t(_ENC_LAYER + "final_layer_norm.weight", lambda d: (d.enc_d,), "norm"),
    _t(_ENC_LAYER + "self_attn.k_proj.weight", lambda d: (d.enc_d, d.enc_d), "linear"),  # Whisper: no k bias
    _t(_ENC_LAYER + "self_attn.out_proj.bias", lambda d: (d.enc_d,), "bias"),
    _t(_ENC_LAYER + "self_attn.out_proj.weight", lambda d: (d.enc_d, d.enc_d), "linear:0.5"),
    _t(_ENC_LAYER + "self_attn.q_proj.bias", lambda d: (d.enc_d,), "bias"),
    _t(_ENC_LAYER + "self_attn.q_proj.weight", lambda d: (d.enc_d, d.enc_d), "linear"),
    _t(_ENC_LAYER + "self_attn.v_proj.bias", lambda d: (d.enc_d,), "bias"),
    _t(_ENC_LAYER + "self_attn.v_proj.weight", lambda d: (d.enc_d, d.enc_d), "linear"),
    _t(_ENC_LAYER + "self_attn_layer_norm.bias", lambda d: (d.enc_d,), "bias"),
    _t(_ENC_LAYER + "self_attn_layer_norm.weight", lambda d: (d.enc_d,), "norm"),
    _t(enc("layer_norm.bias"), lambda d: (d.enc_d,), "bias"),
    _t(enc("layer_norm.weight"), lambda d: (d.enc_d,), "norm"),
)


def _expand(group, n_layers: int):
    """The group's tensors in order, per-layer ones repeated for each layer where they stand."""
    out, i = [], 0
    while i < len(group):
        if not group[i].per_layer:
            out.append((group[i].name, group[i]))
            i += 1
            continue
        j = i
        while j < len(group) and group[j].per_layer:
            j += 1
        for layer in range(n_layers):
            out += [(t.name.format(i=layer), t) for t in group[i:j]]
        i = j
    return out


def plan(d) -> list[tuple[str, tuple[int, ...], Tensor]]:
    """Every tensor of a MuFun checkpoint with dims `d`, in the release's order: name, shape, entry."""
    return [(name, t.shape(d), t)
            for group, n in ((LLM_TENSORS, d.llm_layers), (CONNECTOR_TENSORS, 0), (ENCODER_TENSORS, d.enc_layers))
            for name, t in _expand(group, n)]


def expected_shapes(d) -> dict[str, tuple[int, ...]]:
    """Every tensor the converter reads, with the shape config.json implies."""
    return {name: shape for name, shape, _ in plan(d)}


# Qwen3 name (after LLM) -> llama.cpp's GGUF name; {i} is the block index.
GGUF_NAMES: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.self_attn.q_norm.weight": "blk.{i}.attn_q_norm.weight",
    "model.layers.{i}.self_attn.k_norm.weight": "blk.{i}.attn_k_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_map(n_layers: int) -> list[tuple[str, str]]:
    """(checkpoint name, GGUF name) for every LLM tensor: globals, then block by block."""
    glob = [(s, g) for s, g in GGUF_NAMES.items() if "{i}" not in s]
    per_block = [(s, g) for s, g in GGUF_NAMES.items() if "{i}" in s]
    out = [(llm(s), g) for s, g in glob]
    for i in range(n_layers):
        out += [(llm(s.format(i=i)), g.format(i=i)) for s, g in per_block]
    return out
