"""The original checkpoint's tensors as data (as gguf-py's tensor_mapping.py does): every
name, in the release's order, with the shape config.json implies and how the synthetic
generator fills it. The validator (checkpoint.py), both encoder writers, the GGUF writer
and the synthetic generator read names from here and nowhere else.

MuFun (TinyLLaVA layout): `vision_tower._vision_tower.` is Whisper-large-v3's encoder in
Hugging Face names, `connector._connector.` the two-layer MLP, `language_model.` a
Qwen3ForCausalLM.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

ENCODER = "vision_tower._vision_tower."
CONNECTOR = "connector._connector."
LLM = "language_model."


# The encoder hidden states MuFun's connector reads (0: after the conv stem and positions).
FEATURE_LAYERS = (0, 7, 15, 32)


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
