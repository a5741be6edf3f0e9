"""The Qwen3 language model as a GGUF file for llama.cpp, with the tokenizer inside.

F32/F16/BF16 are written by gguf-py, streaming: header and key/values first, then the tensors
one at a time (BF16 keeps the release's bf16 weights bit for bit). Quantized types come from
llama.cpp's own quantizer (llama_model_quantize) run on an F16 intermediate, which is deleted
afterwards unless asked to keep it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mufun_local import diskspace
from mufun_local.errors import ModelError
from mufun_local.format import weights

from mufun_local.format.checkpoint import gguf_map


def looks_special(token: str) -> bool:
    """llama.cpp's converter (convert_hf_to_gguf.py, does_token_look_special): an added token
    shaped like a control token is typed CONTROL even when the tokenizer does not mark it
    special, as Qwen3 does not mark <|fim_prefix|> and five others; llama.cpp's loader warns
    about each such token on every load otherwise."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def load_vocab(ckpt_dir: Path, vocab_rows: int) -> tuple[list[str], list[int], list[str], dict]:
    """Tokens, token types, merges and special ids of a Qwen2-style tokenizer, padded to rows."""
    import gguf

    vocab = json.loads((ckpt_dir / "vocab.json").read_text(encoding="utf-8"))
    cfg = json.loads((ckpt_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    added: dict[int, tuple[str, bool]] = {}
    for idx, meta in (cfg.get("added_tokens_decoder") or {}).items():
        added[int(idx)] = (meta["content"], bool(meta.get("special", False)))
    if (ckpt_dir / "added_tokens.json").is_file():
        for name, idx in json.loads((ckpt_dir / "added_tokens.json").read_text(encoding="utf-8")).items():
            added.setdefault(int(idx), (name, True))
    size = max([*vocab.values(), *added.keys()]) + 1
    if size > vocab_rows:
        raise ModelError(f"tokenizer has {size} ids but the embedding matrix only {vocab_rows} rows")
    tokens = [f"[PAD{i}]" for i in range(vocab_rows)]
    types = [gguf.TokenType.UNUSED] * vocab_rows
    for tok, idx in vocab.items():
        tokens[idx], types[idx] = tok, gguf.TokenType.NORMAL
    for idx, (name, special) in added.items():
        tokens[idx] = name
        types[idx] = gguf.TokenType.CONTROL if special or looks_special(name) else gguf.TokenType.USER_DEFINED
    merges = [line for line in (ckpt_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    ids = {name: idx for idx, (name, _) in added.items()}
    special = {
        "eos": ids.get(cfg.get("eos_token") or "<|endoftext|>", ids.get("<|endoftext|>")),
        "pad": ids.get(cfg.get("pad_token") or "<|endoftext|>", ids.get("<|endoftext|>")),
        "im_end": ids.get("<|im_end|>"),
        "endoftext": ids.get("<|endoftext|>"),
    }
    return tokens, [int(t) for t in types], merges, special


def write_gguf(ckpt, path: Path, ftype: str, vocab=None, progress=None) -> None:
    """Write an F32, F16 or BF16 GGUF of the LLM, tensor by tensor (`vocab`: load_vocab's result)."""
    import gguf

    if weights.get(ftype).quantized:
        raise ValueError("write_gguf writes f32, f16 or bf16; other types go through quantize()")
    d = ckpt.dims
    tokens, types, merges, special = vocab or load_vocab(ckpt.path, d.vocab_rows)
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_name(str(ckpt.source))
    w.add_context_length(d.max_positions)
    w.add_embedding_length(d.hidden)
    w.add_block_count(d.llm_layers)
    w.add_feed_forward_length(d.llm_ffn)
    w.add_head_count(d.llm_heads)
    w.add_head_count_kv(d.llm_kv_heads)
    w.add_key_length(d.head_dim)
    w.add_value_length(d.head_dim)
    w.add_rope_freq_base(d.rope_theta)
    w.add_layer_norm_rms_eps(d.rms_eps)
    w.add_file_type(gguf.LlamaFileType[weights.get(ftype).ftype])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(special["eos"])
    w.add_bos_token_id(special["eos"])
    w.add_pad_token_id(special["pad"])
    w.add_add_bos_token(False)

    pairs = gguf_map(d.llm_layers)
    kinds = {}
    for src, dst in pairs:
        shape = ckpt.tensors[src].shape
        # norms (1-D) stay F32, as llama.cpp expects
        kinds[dst] = "f32" if len(shape) == 1 else ftype
        if kinds[dst] == "bf16":
            w.add_tensor_info(dst, shape, np.dtype(np.uint16), int(np.prod(shape)) * 2,
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            dt = np.dtype(np.float32 if kinds[dst] == "f32" else np.float16)
            w.add_tensor_info(dst, shape, dt, int(np.prod(shape)) * dt.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for k, (src, dst) in enumerate(pairs):
        if kinds[dst] == "bf16":
            data = ckpt.get_bf16(src)
        else:
            data = ckpt.get(src, dtype=np.float32 if kinds[dst] == "f32" else np.float16)
        w.write_tensor_data(data)
        if progress:
            progress(k + 1, len(pairs))
    w.close()


def _imatrix_param(imatrix: dict):
    """A NULL-terminated llama_model_imatrix_data array for llama_model_quantize_params.imatrix,
    and the buffers it points into (keep both alive until the quantizer returns)."""
    import ctypes

    import llama_cpp
    keep = []
    arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    for i, (name, v) in enumerate(sorted(imatrix.items())):
        v = np.ascontiguousarray(v, dtype=np.float32)
        n = ctypes.create_string_buffer(name.encode())
        keep += [v, n]
        arr[i].name = ctypes.cast(n, ctypes.c_char_p)
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = v.size
    arr[len(imatrix)].name = None
    keep.append(arr)
    return arr, keep


def quantize(f16_path: Path, out_path: Path, quant: str, threads: int = 0, verbose: bool = False,
             output_type: str | None = None, embedding_type: str | None = None,
             imatrix: dict | None = None) -> None:
    """llama.cpp's quantizer: F16 GGUF -> one of weights.TYPES made by it (its log only when
    verbose). `output_type` / `embedding_type` (weights.KEEP_TYPES) keep the output matrix
    (lm_head) and the token embeddings at that type instead of the recipe's own
    (llama-quantize's --output-tensor-type and --token-embedding-type). `imatrix`: weight name
    -> mean squared input per column (mufun_local.store.imatrix), as llama-quantize's --imatrix."""
    import ctypes

    import gguf
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    from mufun_local.logs import llama_errors, route_llama_logs

    route_llama_logs(verbose)
    llama_errors(clear=True)
    params = llama_cpp.llama_model_quantize_default_params()
    wt = weights.get(quant)
    params.ftype = int(gguf.LlamaFileType[wt.ftype])
    params.nthread = threads or (os.cpu_count() or 1)
    for field, kind in (("output_tensor_type", output_type or wt.output),
                        ("token_embedding_type", embedding_type or wt.embedding)):
        if kind is not None:
            setattr(params, field, int(gguf.GGMLQuantizationType[weights.KEEP_TYPES[kind]]))
    keep = None
    if imatrix:
        arr, keep = _imatrix_param(imatrix)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    with suppress_stdout_stderr(disable=verbose):  # its per-tensor report bypasses the log callback
        rc = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(out_path).encode(), params)
    del keep
    if rc != 0:
        why = next((e.split("failed to quantize:", 1)[1].strip() for e in reversed(llama_errors())
                    if "failed to quantize:" in e), None) or "; ".join(llama_errors()[-1:]) or f"code {rc}"
        err = ModelError(f"llama.cpp failed to quantize to {quant}: {why}")
        raise diskspace.full_disk_error(err, out_path.parent) or err
