"""Synthetic MuFun checkpoints in the exact on-disk format of ``Yi3852/MuFun-Base``.

Tests, benchmarks and ``mufun-local demo`` need a checkpoint without downloading 18 GB, so
this module writes one with random weights: the same file names (sharded
``model-0000K-of-0000M.safetensors`` + ``model.safetensors.index.json``), the same config
keys and nesting (TinyLLaVA's ``TinyLlavaConfig`` with a Qwen3 ``text_config`` and a
Whisper ``vision_config``), the same tensor names and dtype (bf16), and the same tokenizer
files (a Qwen2-style byte-level BPE).

Differences from the real release that cannot be avoided, and why:
- The weights are random (seeded), so answers are noise.
- The BPE is trained here on a few paragraphs of English, so the tokenizer has 823 tokens
  (256 bytes + merges) instead of 151,643; the 26 Qwen3 special tokens follow it in
  Qwen3's order (``<|endoftext|>`` is id 823 here, 151643 in the release). The embedding
  matrix keeps more rows than the tokenizer has ids, as the real 151,936 vs 151,669 does.
- ``configuration.py`` / ``modeling_mufun.py`` / ``audio_preprocess.py`` (remote code) are
  not written: nothing here executes remote code; the PyTorch reference re-implements them.
- Config values that only matter for training (``tune_type_*``, dropout, ...) are copied
  from TinyLLaVA's defaults rather than read from the release.

bf16 is written without torch (numpy has no bf16): float32 is rounded to nearest-even and
stored as the upper 16 bits, byte-identical to ``torch.bfloat16``.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# Qwen3's added tokens, in id order, with whether transformers marks them `special`.
QWEN3_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
    ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    # the release marks these six not special (tokenizer_config.json), though they look it
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]

# Qwen2/Qwen3 pre-tokenizer split (the same regex llama.cpp uses for pre-tokenizer "qwen2").
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class Preset:
    """Every size of a synthetic checkpoint."""

    enc_d: int
    enc_layers: int
    enc_heads: int
    enc_ffn: int
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_head_dim: int
    llm_ffn: int
    vocab_rows: int
    bpe_vocab: int = 1000
    max_shard_bytes: int = 5 * 1024**3
    n_mels: int = 128
    enc_positions: int = 1500


PRESETS: dict[str, Preset] = {
    # Small everything, but 32 encoder layers so hidden states 0/7/15/32 exist.
    "tiny": Preset(enc_d=64, enc_layers=32, enc_heads=4, enc_ffn=128,
                   llm_hidden=64, llm_layers=2, llm_heads=4, llm_kv_heads=2, llm_head_dim=16,
                   llm_ffn=128, vocab_rows=1088, max_shard_bytes=1024**2),
    # Real Whisper-large-v3 encoder, Qwen3-0.6B-shaped LLM.
    "small": Preset(enc_d=1280, enc_layers=32, enc_heads=20, enc_ffn=5120,
                    llm_hidden=1024, llm_layers=28, llm_heads=16, llm_kv_heads=8,
                    llm_head_dim=128, llm_ffn=3072, vocab_rows=151936,
                    max_shard_bytes=1024**3),
    # Exact MuFun-Base dimensions (Whisper-large-v3 + Qwen3-8B-Base).
    "full": Preset(enc_d=1280, enc_layers=32, enc_heads=20, enc_ffn=5120,
                   llm_hidden=4096, llm_layers=36, llm_heads=32, llm_kv_heads=8,
                   llm_head_dim=128, llm_ffn=12288, vocab_rows=151936),
}

ENGLISH_TEXT = """\
Music is the arrangement of sound to create some combination of form, harmony, melody,
rhythm, or otherwise expressive content. A song is a musical composition performed by the
human voice. The voice often carries the melody, a series of distinct and fixed pitches,
using patterns of sound and silence. Songs have a structure, such as the common
verse-chorus-verse form, or a strophic form, where the same music is repeated for every
verse. The tempo of a piece is its speed, measured in beats per minute; a slow ballad may
move at 60 beats per minute while dance music often runs between 120 and 130.
Genres group music by convention: blues, classical, country, disco, hip hop, jazz, metal,
pop, reggae and rock are the ten genres of a well known data set. Jazz is known for swing
and blue notes, call and response vocals, polyrhythms and improvisation. Rock music is
built around the electric guitar, the bass guitar and the drums, with a strong back beat.
Classical music uses the orchestra: strings, woodwinds, brass and percussion, and forms
such as the symphony, the concerto and the sonata. The piano is a keyboard instrument in
which felt hammers strike strings; the violin is played with a bow. A chord is three or
more notes sounded together; a major chord sounds bright and happy, a minor chord dark or
sad. The key of a song names its tonal centre, for example C major or A minor.
What genre is this song? What is the mood of this music? Which instruments can you hear?
Describe the structure of the track. Is there a singer, and what language are the lyrics
in? How fast is the tempo? The answer is: it sounds like an upbeat pop song with drums,
bass, synthesizers and a female vocalist, in four four time at about 118 beats per minute.
Numbers like 1, 2, 3, 2024 and 3.14 appear in text too, as do names, places and dates:
the record was released on 12 March 1999 in London, England, and sold a million copies.
"""


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(vocab_size: int) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE with Qwen2's pre-tokenizer, trained on ENGLISH_TEXT."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    lines = ENGLISH_TEXT.splitlines(keepends=True)
    tok.train_from_iterator(lines * 4, trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    vocab = dict(sorted(state["vocab"].items(), key=lambda kv: kv[1]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    return vocab, merges


def tokenizer_files(vocab: dict[str, int], merges: list[str], model_max_length: int) -> dict[str, str]:
    """The tokenizer files of a Qwen3 checkpoint, as text, keyed by file name."""
    base = len(vocab)
    added = {name: base + i for i, (name, _) in enumerate(QWEN3_ADDED_TOKENS)}
    decoder = {
        str(base + i): {"content": name, "lstrip": False, "normalized": False,
                        "rstrip": False, "single_word": False, "special": special}
        for i, (name, special) in enumerate(QWEN3_ADDED_TOKENS)
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                                      "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                                      "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                                      "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                                      "<|video_pad|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    special_map = {
        "additional_special_tokens": config["additional_special_tokens"],
        "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False},
        "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False},
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "added_tokens.json": json.dumps(added, indent=2, ensure_ascii=False) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
    }


# --------------------------------------------------------------------------- configs


def make_config(p: Preset, eos_id: int, model_max_length: int) -> dict:
    text_config = {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "head_dim": p.llm_head_dim,
        "hidden_act": "silu",
        "hidden_size": p.llm_hidden,
        "initializer_range": 0.02,
        "intermediate_size": p.llm_ffn,
        "max_position_embeddings": 32768,
        "max_window_layers": p.llm_layers,
        "model_type": "qwen3",
        "num_attention_heads": p.llm_heads,
        "num_hidden_layers": p.llm_layers,
        "num_key_value_heads": p.llm_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": p.vocab_rows,
    }
    vision_config = {
        "_name_or_path": "openai/whisper-large-v3",
        "activation_dropout": 0.0,
        "activation_function": "gelu",
        "architectures": ["WhisperForConditionalGeneration"],
        "attention_dropout": 0.0,
        "d_model": p.enc_d,
        "dropout": 0.0,
        "encoder_attention_heads": p.enc_heads,
        "encoder_ffn_dim": p.enc_ffn,
        "encoder_layerdrop": 0.0,
        "encoder_layers": p.enc_layers,
        "max_source_positions": p.enc_positions,
        "model_type": "whisper",
        "num_mel_bins": p.n_mels,
        "scale_embedding": False,
        "torch_dtype": "bfloat16",
    }
    return {
        "architectures": ["TinyLlavaForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration.TinyLlavaConfig",
            "AutoModelForCausalLM": "modeling_mufun.TinyLlavaForConditionalGeneration",
        },
        "cache_dir": None,
        "connector_type": "blp_4i_2x",
        "hidden_size": p.llm_hidden,
        "ignore_index": -100,
        "image_aspect_ratio": "audio",
        "image_token_index": -200,
        "llm_model_name_or_path": "Qwen/Qwen3-8B-Base",
        "model_type": "tinyllava",
        "num_queries": 128,
        "num_resampler_layers": 3,
        "pad_token": "<|endoftext|>",
        "pad_token_id": eos_id,
        "resampler_hidden_size": 768,
        "text_config": text_config,
        "tokenizer_model_max_length": model_max_length,
        "tokenizer_name_or_path": "Qwen/Qwen3-8B-Base",
        "tokenizer_padding_side": "right",
        "tokenizer_use_fast": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.3",
        "tune_type_connector": "full",
        "tune_type_llm": "full",
        "tune_type_vision_tower": "frozen",
        "tune_vision_tower_from_layer": 0,
        "use_cache": True,
        "vision_config": vision_config,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "patch",
        "vision_hidden_size": p.enc_d,
        "vision_model_name_or_path": "openai/whisper-large-v3",
        "vocab_size": p.vocab_rows,
    }


def make_generation_config(eos_ids: list[int], pad_id: int) -> dict:
    return {
        "bos_token_id": eos_ids[-1],
        "do_sample": True,
        "eos_token_id": eos_ids,
        "max_new_tokens": 512,
        "pad_token_id": pad_id,
        "temperature": 0.2,
        "top_k": 20,
        "top_p": 0.95,
        "transformers_version": "4.51.3",
    }


# --------------------------------------------------------------------------- tensors

Init = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


def _linear(fan_in: int, gain: float = 1.0) -> Init:
    return lambda rng, shape: rng.standard_normal(shape, dtype=np.float32) * (gain / math.sqrt(fan_in))


def _around(center: float, spread: float) -> Init:
    return lambda rng, shape: center + spread * rng.standard_normal(shape, dtype=np.float32)


def _sinusoids(length: int, channels: int) -> Init:
    def make(_rng, _shape):  # Whisper's fixed positional embedding
        inc = math.log(10000) / (channels // 2 - 1)
        inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32))
        t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
        return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)
    return make


def _init(kind: str, shape: tuple[int, ...]) -> Init:
    """How the tensor table's `init` kinds are filled: near-identity norms, small biases,
    fan-in scaled linear maps (gain after the colon), Whisper's sinusoid positions."""
    if kind == "bias":
        return _around(0.0, 0.02)
    if kind == "norm":
        return _around(1.0, 0.1)
    if kind == "embed":
        return _around(0.0, 1.0)
    if kind == "positions":
        return _sinusoids(*shape)
    if kind == "conv":
        return _linear(shape[1] * shape[2])
    name, _, gain = kind.partition(":")
    if name == "linear":
        return _linear(shape[1], float(gain or 1.0))
    raise ValueError(f"unknown init kind {kind!r}")


def tensor_plan(p: Preset) -> list[tuple[str, tuple[int, ...], Init]]:
    """Every tensor of a MuFun checkpoint, in the release's order: name, shape, init (the
    format's table, format/checkpoint.py, with the dims this preset's config.json gives)."""
    from .format.checkpoint import dims_from_config, plan

    dims = dims_from_config(make_config(p, eos_id=0, model_max_length=8192))
    return [(name, shape, _init(t.init, shape)) for name, shape, t in plan(dims)]


def to_bf16_bytes(x: np.ndarray) -> bytes:
    """float32 -> bfloat16 (round to nearest even), as torch does, returned as raw bytes."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return rounded.astype("<u2").tobytes()


def _shards(plan, max_bytes: int) -> list[list[tuple[str, tuple[int, ...], Init]]]:
    shards, cur, size = [], [], 0
    for item in plan:
        nbytes = 2 * math.prod(item[1])
        if cur and size + nbytes > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += nbytes
    if cur:
        shards.append(cur)
    return shards


def _write_shard(path: Path, items, rng: np.random.Generator) -> None:
    """One safetensors file, written tensor by tensor (the header first, from the shapes)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in items:
        nbytes = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for _, shape, init in items:
            fh.write(to_bf16_bytes(init(rng, shape)))


def generate(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0,
             progress: Callable[[str], None] | None = None) -> Path:
    """Write a synthetic MuFun checkpoint to ``out_dir`` and return its path."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_max_length = 8192

    vocab, merges = train_tokenizer(p.bpe_vocab)
    eos_id, im_end_id = len(vocab), len(vocab) + 2
    if p.vocab_rows <= len(vocab) + len(QWEN3_ADDED_TOKENS):
        raise ValueError("vocab_rows must exceed the tokenizer size")
    for name, text in tokenizer_files(vocab, merges, model_max_length).items():
        (out / name).write_text(text, encoding="utf-8")
    (out / "config.json").write_text(json.dumps(make_config(p, eos_id, model_max_length), indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps(make_generation_config([eos_id, im_end_id], eos_id), indent=2) + "\n")

    plan = tensor_plan(p)
    shards = _shards(plan, p.max_shard_bytes)
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for k, items in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        if progress:
            progress(f"writing {fname} ({len(items)} tensors)")
        _write_shard(out / fname, items, rng)
        for name, shape, _ in items:
            weight_map[name] = fname
            total += 2 * math.prod(shape)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def song(path: str | os.PathLike, seconds: float, rate: int = 44100, seed: int = 0) -> Path:
    """A stereo 16-bit WAV 'song': chords that change every 2 s, a kick/snare beat and some
    noise. The benchmarks' input and the default calibration audio of an importance matrix."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    roots = 220.0 * 2 ** (rng.integers(0, 12, size=int(seconds // 2) + 1) / 12)
    root = roots[(t // 2).astype(int)]
    x = sum(np.sin(2 * np.pi * root * r * t) for r in (1.0, 1.26, 1.5)) / 3
    beat = (t * 2) % 1.0
    x += 0.6 * np.exp(-beat * 30) * np.sin(2 * np.pi * 55 * t) + 0.02 * rng.standard_normal(len(t))
    stereo = np.stack([0.4 * x, 0.35 * np.roll(x, 40)], 1).astype(np.float32)
    sf.write(str(path), stereo, rate, subtype="PCM_16")
    return Path(path)
