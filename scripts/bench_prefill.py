#!/usr/bin/env python3
"""llama.cpp prefill of audio-embedding rows: rows/s for each setting, side by side in one run.

    python scripts/bench_prefill.py MODEL_DIR [--gguf other.gguf ...] [--rows 512] [--peak-gops 666]

For the model's GGUF (and any --gguf given, e.g. other quantizations made with
`--requantize q4_0,q8_0`), measures the prefill of `--rows` random audio rows after the
template's first text, for: batch sizes, flash attention on/off, threads, KV cache types.
Each setting's first-step logits (same rows, same prompt) are compared with those of the
exact setting (F32 KV cache, no flash attention) on the same GGUF: max abs difference, the
same in units of the logits' standard deviation, and the top-1 token; so a faster setting
shows what it trades. Other GGUFs run the default setting only (compared with nothing).
GOPS counts 2 operations per weight per row (the matrix products; attention excluded).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT = {"n_batch": 512, "flash_attn": False, "threads": 2, "kv": "f16"}


def settings_grid(threads: int) -> list[dict]:
    """The exact setting first (F32 KV, no flash attention: the others are compared with it)."""
    grid = [dict(DEFAULT, threads=threads, kv="f32"), dict(DEFAULT, threads=threads)]
    for b in (256, 1024):
        grid.append(dict(DEFAULT, threads=threads, n_batch=b))
    grid.append(dict(DEFAULT, threads=threads, flash_attn=True))
    grid.append(dict(DEFAULT, threads=threads, flash_attn=True, kv="q8_0"))  # a quantized V cache needs it
    grid.append(dict(DEFAULT, threads=threads, kv="f32", flash_attn=True))
    if threads > 1:
        grid.append(dict(DEFAULT, threads=1))
    return grid


def measure(gguf: Path, setting: dict, rows: int, prompt: str) -> dict:
    from mufun_local.llm.llama import LLM
    llm = LLM(gguf, threads=setting["threads"])
    try:
        llm.open_context(rows + 256, setting["n_batch"], flash_attn=setting["flash_attn"], kv_type=setting["kv"])
        ids = llm.tokenize(prompt)
        emb = (np.random.default_rng(0).standard_normal((rows, llm.n_embd)) * 0.02).astype(np.float32)
        tail = llm.tokenize(" What genre is this? ASSISTANT:")
        llm.eval_embeddings(emb[:32])  # pages the weights in
        llm.reset()
        llm.eval_tokens(ids, logits_at_end=False)
        t0 = time.perf_counter()
        llm.eval_embeddings(emb)
        best = time.perf_counter() - t0
        llm.eval_tokens(tail)
        logits = llm.logits()
        n_params = sum_params(gguf)
    finally:
        llm.close()
    return {"seconds": best, "rows_s": rows / best, "gops": 2 * n_params * rows / best / 1e9, "logits": logits}


def sum_params(gguf: Path) -> int:
    """Weights in the matrix products of one row: every 2-D tensor but the token table."""
    from gguf import GGUFReader
    r = GGUFReader(str(gguf))
    return int(sum(int(np.prod(t.shape)) for t in r.tensors if len(t.shape) == 2 and "token_embd" not in t.name))


def requantize(src: Path, kinds: list[str], work: Path) -> list[Path]:
    """Other quantizations of src in `work`, for speed only (requantizing loses accuracy:
    not for answers; the model directory is left as it is)."""
    import llama_cpp
    out = []
    work.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        dst = work / f"{src.stem}-speedonly-{kind}.gguf"
        if not dst.exists():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
            params.allow_requantize = True
            params.nthread = 2
            tmp = dst.with_suffix(".partial")
            if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
                raise SystemExit(f"quantizing to {kind} failed")
            tmp.rename(dst)
        out.append(dst)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--gguf", action="append", default=[], help="another GGUF of the same model")
    ap.add_argument("--requantize", default="", help="comma list: make these from the model's GGUF (speed only)")
    ap.add_argument("--work", help="where --requantize writes (default: the temporary folder)")
    ap.add_argument("--rows", type=int, default=1024, help="audio rows (at least the largest batch tried)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak-gops", type=float, default=0.0, help="the CPU's int8 peak, for the fraction column")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--only", default="", help="comma list of kv:flash settings (batch 512), e.g. f32:off,f16:on")
    args = ap.parse_args()

    from mufun_local.format.model_dir import ModelDir
    from mufun_local.llm.prompt import SYSTEM_PROMPT
    md = ModelDir.open(args.model_dir)
    prompt = SYSTEM_PROMPT + " USER: \n"
    ggufs = [md.llm_file] + [Path(g) for g in args.gguf]
    import tempfile
    ggufs += requantize(md.llm_file, [k for k in args.requantize.split(",") if k],
                        Path(args.work or tempfile.gettempdir()))
    print("| GGUF | batch | flash attn | KV | threads | rows/s | GOPS | of int8 peak | max abs logit diff vs exact "
          "(x logit std) | top-1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for gguf in ggufs:
        grid = settings_grid(args.threads) if gguf == md.llm_file else [dict(DEFAULT, threads=args.threads)]
        if args.only:
            want = {tuple(x.split(":")) for x in args.only.split(",")}
            grid = [g for g in grid if (g["kv"], "on" if g["flash_attn"] else "off") in want and g["n_batch"] == 512
                    and g["threads"] == args.threads]
        base = None
        for s in grid:
            r = measure(gguf, s, args.rows, prompt)
            if base is None:
                base = r["logits"]
            diff = float(np.abs(r["logits"] - base).max())
            same = int(np.argmax(r["logits"])) == int(np.argmax(base))
            frac = f"{r['gops'] / args.peak_gops:.0%}" if args.peak_gops else ""
            cmp = (f"{diff:.4f} ({diff / float(base.std()):.3f})", "same" if same else "differs") \
                if gguf == md.llm_file else ("—", "—")
            print(f"| {gguf.name} | {s['n_batch']} | {'on' if s['flash_attn'] else 'off'} | {s['kv']} | {s['threads']} "
                  f"| {r['rows_s']:.1f} | {r['gops']:.0f} | {frac} | {cmp[0]} | {cmp[1]} |", flush=True)
            results.append({"gguf": gguf.name, **s, "rows_s": r["rows_s"], "gops": r["gops"], "max_diff": diff,
                            "same_top1": same})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
