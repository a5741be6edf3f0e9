"""Synthetic checkpoints have the original release's format; the reference loads them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mufun_local.synthetic import PRESETS, QWEN3_ADDED_TOKENS, make_config, tensor_plan, to_bf16_bytes

torch = pytest.importorskip("torch", reason="these tests compare with PyTorch (the test extra)")

RELEASE_FILES = {
    "config.json", "generation_config.json", "model.safetensors.index.json", "vocab.json",
    "merges.txt", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json",
}


def test_file_set(tiny_ckpt):
    names = {p.name for p in tiny_ckpt.iterdir()}
    shards = {n for n in names if n.endswith(".safetensors")}
    assert names - shards == RELEASE_FILES
    m = len(shards)
    assert m >= 2, "the tiny preset is sharded like the release"
    assert shards == {f"model-{k:05d}-of-{m:05d}.safetensors" for k in range(1, m + 1)}


def test_config_keys_and_nesting(tiny_ckpt):
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    for key in ("architectures", "connector_type", "hidden_size", "text_config", "vision_config",
                "vision_hidden_size", "tokenizer_model_max_length", "tokenizer_padding_side"):
        assert key in cfg
    assert cfg["connector_type"] == "blp_4i_2x"
    assert cfg["text_config"]["model_type"] == "qwen3"
    assert cfg["vision_config"]["model_type"] == "whisper"
    assert cfg["vision_config"]["num_mel_bins"] == 128
    assert cfg["vision_config"]["encoder_layers"] == 32
    assert cfg["text_config"]["tie_word_embeddings"] is False


def test_index_consistent_with_shards(tiny_ckpt):
    from safetensors import safe_open

    index = json.loads((tiny_ckpt / "model.safetensors.index.json").read_text())
    seen, total = {}, 0
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(tiny_ckpt / shard), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                assert t.dtype == torch.bfloat16, name
                seen[name] = (shard, tuple(t.shape))
                total += t.numel() * 2
    assert set(seen) == set(index["weight_map"])
    assert all(index["weight_map"][n] == s for n, (s, _) in seen.items())
    assert index["metadata"]["total_size"] == total
    expected = {name: shape for name, shape, _ in tensor_plan(PRESETS["tiny"])}
    assert {n: s for n, (_, s) in seen.items()} == expected


def test_tensor_names_follow_the_release():
    names = {n for n, _, _ in tensor_plan(PRESETS["full"])}
    assert "vision_tower._vision_tower.layers.31.self_attn.k_proj.weight" in names
    assert "vision_tower._vision_tower.layers.0.self_attn.k_proj.bias" not in names  # k_proj has no bias
    assert "connector._connector.linear1.weight" in names
    assert "language_model.lm_head.weight" in names
    assert "language_model.model.layers.35.mlp.down_proj.weight" in names
    assert not any(".layers.36." in n and n.startswith("language_model") for n in names)


def test_full_and_small_dims():
    full = dict((n, s) for n, s, _ in tensor_plan(PRESETS["full"]))
    assert full["language_model.model.embed_tokens.weight"] == (151936, 4096)
    assert full["connector._connector.linear1.weight"] == (10240, 5120)
    assert full["vision_tower._vision_tower.conv1.weight"] == (1280, 128, 3)
    assert full["language_model.model.layers.0.mlp.gate_proj.weight"] == (12288, 4096)
    small = PRESETS["small"]
    assert small.enc_d == 1280 and small.llm_hidden >= 1024 and small.llm_layers >= 24


def test_tokenizer_loads_with_transformers(tiny_ckpt):
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer.from_pretrained(str(tiny_ckpt))
    vocab = json.loads((tiny_ckpt / "vocab.json").read_text())
    base = len(vocab)
    for i, (name, _) in enumerate(QWEN3_ADDED_TOKENS):
        assert tok.convert_tokens_to_ids(name) == base + i
    assert len(tok) == base + len(QWEN3_ADDED_TOKENS) < PRESETS["tiny"].vocab_rows
    text = "What genre is this song? It sounds like jazz, 120 bpm."
    assert tok.decode(tok(text).input_ids) == text
    assert tok("<|im_end|>").input_ids == [base + 2]


def test_bf16_rounding_matches_torch():
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 100
    ours = np.frombuffer(to_bf16_bytes(x), dtype=np.uint16)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_reference_reads_every_preset_config(preset):
    from transformers import Qwen3Config, WhisperConfig

    p = PRESETS[preset]
    cfg = make_config(p, eos_id=1000, model_max_length=8192)
    w, q = WhisperConfig(**cfg["vision_config"]), Qwen3Config(**cfg["text_config"])
    assert (w.d_model, w.encoder_layers, w.num_mel_bins) == (p.enc_d, 32, 128)
    assert (q.hidden_size, q.num_hidden_layers, q.vocab_size) == (p.llm_hidden, p.llm_layers, p.vocab_rows)


def test_reference_generates_deterministically(reference):
    mel = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 128, 3000)).astype(np.float32))
    emb = reference.embed_windows(mel)
    assert emb.shape == (300, PRESETS["tiny"].llm_hidden)
    a = reference.generate_from_embeddings("What genre is this?", [emb], max_tokens=8)
    b = reference.generate_from_embeddings("What genre is this?", [emb], max_tokens=8)
    assert a.tokens == b.tokens and len(a.tokens) >= 1
    np.testing.assert_array_equal(a.first_logits, b.first_logits)


def test_same_seed_same_checkpoint(tmp_path):
    from mufun_local.synthetic import generate
    a, b = generate(tmp_path / "a", "tiny", seed=3), generate(tmp_path / "b", "tiny", seed=3)
    for f in sorted(p.name for p in a.iterdir()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
