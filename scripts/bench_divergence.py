#!/usr/bin/env python3
"""How far each precision choice moves the answers from the float32 reference, beside the
original's own bfloat16 run (the yardstick a default may not exceed), in one run.

    python scripts/bench_divergence.py --preset small --songs 3 --seconds 30 --steps 64

For each song the PyTorch reference in float32 answers greedily (`--steps` tokens); every
run is then teacher-forced through that same answer and its next-token distributions are
compared with the reference's at each step: mean KL(reference || run), top-1 agreement, and
the first step's largest logit error in units of the logits' standard deviation. Runs:
the original in bfloat16 (its own audio embeddings too), mufun-local's defaults, then one
choice varied at a time from the exact setting (float32 encoder, F32 GGUF, F32 KV cache,
no flash attention): encoder engine and compute type; LLM quantization and mixes that keep
the output (and token-embedding) matrices at Q8_0 or F16 (llama.cpp's quantize parameters);
KV cache and flash attention. Random weights make absolute quality meaningless, but these
numbers rank settings and catch a broken one. Needs the `reference` extra.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_audio import make_song  # noqa: E402

QUESTION = "Describe this music: genre, mood, instruments and tempo."
# name -> (llama.cpp ftype, output tensor type, token-embedding type); None keeps llama.cpp's choice
LLM_MIXES = {
    "f16": ("f16", None, None),
    "bf16": ("bf16", None, None),  # written from the checkpoint (its own bf16 weights), not from F16
    "q8_0": ("q8_0", None, None),
    "q5_k_m": ("q5_k_m", None, None),
    "q4_k_m": ("q4_k_m", None, None),
    "q4_k_m, output q8_0": ("q4_k_m", "q8_0", None),
    "q4_k_m, output f16": ("q4_k_m", "f16", None),
    "q4_k_m, output + embeddings q8_0": ("q4_k_m", "q8_0", "q8_0"),
}


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def compare(ref: np.ndarray, run: np.ndarray) -> dict:
    """ref, run: [steps, vocab] logits of the same teacher-forced steps."""
    n = min(len(ref), len(run))
    p, q = softmax(ref[:n].astype(np.float64)), softmax(run[:n].astype(np.float64))
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30)), axis=-1)))
    top1 = float(np.mean(ref[:n].argmax(-1) == run[:n].argmax(-1)))
    first = float(np.abs(ref[0] - run[0]).max() / ref[0].std())
    return {"kl": kl, "top1": top1, "first_err_std": first, "steps": n}


def make_gguf(f16: Path, name: str, mix: tuple, work: Path, ckpt: Path) -> Path:
    from mufun_local.convert.read_checkpoint import Checkpoint
    from mufun_local.convert.write_gguf import WRITTEN, load_vocab, quantize, write_gguf
    ftype, output, embedding = mix
    if ftype == "f16":
        return f16
    out = work / f"llm-{name.replace(' ', '').replace(',', '-').replace('+', '-')}.gguf"
    if not out.exists() and ftype in WRITTEN:
        c = Checkpoint(ckpt)
        write_gguf(c, out, ftype, vocab=load_vocab(c.path, c.dims.vocab_rows))
    elif not out.exists():
        quantize(f16, out, ftype, output_type=output, embedding_type=embedding)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("tiny", "small"), default="small")
    ap.add_argument("--ckpt", help="an original-format checkpoint instead of generating the preset")
    ap.add_argument("--songs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--work", help="working directory (default: a new temporary one)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--runs", default="", help="comma list: only the runs whose names contain one of these "
                                                "(the yardstick always runs), e.g. 'LLM bf16,LLM f16'")
    args = ap.parse_args()

    import torch

    from mufun_local.format import weights
    from mufun_local.format.model_dir import ModelDir
    from mufun_local.convert.read_checkpoint import Checkpoint
    from mufun_local.convert.write_gguf import load_vocab, write_gguf
    from mufun_local.convert.run import convert
    from mufun_local.encoder.backends import get
    from mufun_local.model import Caches, Model
    from mufun_local.options import Options
    from mufun_reference import ReferenceMuFun

    work = Path(args.work or tempfile.mkdtemp(prefix="mufun-bench-div-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MUFUN_HOME"] = str(work / "home")
    ckpt = Path(args.ckpt) if args.ckpt else work / args.preset
    if not args.ckpt and not (ckpt / "config.json").exists():
        from mufun_local.synthetic import generate
        generate(ckpt, args.preset, seed=0)
    model = work / "model-f32"
    if not (model / "manifest.json").exists():
        convert(str(ckpt), model, quant="f32", encoder_quant="float32", encoder_backends=("ctranslate2", "onnx"),
                onnx_int8=True, force=True, quiet=True)
    md = ModelDir.open(model)
    f16 = work / "llm-f16.gguf"
    if not f16.exists():
        c = Checkpoint(ckpt)
        write_gguf(c, f16, "f16", vocab=load_vocab(c.path, c.dims.vocab_rows))
    songs = [str(make_song(work / f"song{i}.wav", args.seconds, 44100, seed=10 + i)) for i in range(args.songs)]

    t0 = time.perf_counter()
    ref = ReferenceMuFun(ckpt, torch.float32)
    answers, ref_logits = [], []
    for s in songs:
        emb = [ref.embed_audio(s)]
        tokens = ref.generate_from_embeddings(QUESTION, emb, args.steps).tokens
        answers.append(tokens)
        ref_logits.append(ref.forced_logits(QUESTION, emb, tokens))
    del ref
    bf16 = ReferenceMuFun(ckpt, torch.bfloat16)
    rows = {"the original in bfloat16 (the yardstick)": [
        compare(r, bf16.forced_logits(QUESTION, [bf16.embed_audio(s)], t)) for s, t, r in zip(songs, answers, ref_logits)]}
    del bf16
    print(f"reference runs: {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    exact = Options(device="cpu", encoder_backend="ctranslate2", compute_type="float32", f32_kv=True)
    default_encoder = "openvino" if get("openvino").installed() and \
        get("openvino").default_compute_type() == "bfloat16" else "ctranslate2"
    # (name, options, the GGUF's mix or None for the F32 one): GGUFs are made only for runs kept
    runs: list[tuple[str, Options, tuple | None]] = [
        (f"mufun-local defaults ({default_encoder} {get(default_encoder).default_compute_type()} encoder, "
         f"{weights.DEFAULT} GGUF, F16 KV)", Options(device="cpu", encoder_backend=default_encoder),
         (weights.DEFAULT, LLM_MIXES.get(weights.DEFAULT, (weights.DEFAULT, None, None)))),
        ("exact: float32 encoder, F32 GGUF, F32 KV", exact, None),
    ]
    for backend, ct in (("openvino", "bfloat16"), ("onnxruntime", "int8"), ("ctranslate2", "int8")):
        if get(backend).installed():
            runs.append((f"encoder {backend} {ct}", replace(exact, encoder_backend=backend, compute_type=ct), None))
    for name, mix in LLM_MIXES.items():
        runs.append((f"LLM {name}", exact, (name, mix)))
    runs.append(("KV cache F16", replace(exact, f32_kv=False), None))
    runs.append(("KV cache F16, flash attention", replace(exact, f32_kv=False, flash_attn=True), None))

    if args.runs:
        runs = [r for r in runs if any(w.strip() and w.strip() in r[0] for w in args.runs.split(","))]

    from mufun_local.encoder.embcache import MemoryCache
    embeddings, sizes = MemoryCache(), {}
    for name, opt, mix in runs:
        t1 = time.perf_counter()
        gguf = md.llm_file if mix is None else make_gguf(f16, *mix, work, ckpt)
        m = replace(md, manifest={**md.manifest, "llm": {**md.manifest["llm"], "file": os.path.relpath(gguf, model)}})
        # runs with the same encoder reuse its embeddings
        with Model(m, caches=Caches(embeddings), **asdict(opt)) as ours:
            rows[name] = [compare(r, ours.forced_logits(s, QUESTION, t)) for s, t, r in zip(songs, answers, ref_logits)]
        sizes[name] = gguf.stat().st_size
        print(f"{name}: {time.perf_counter() - t1:.0f} s", file=sys.stderr)

    print(f"\n{ckpt.name} checkpoint, {args.songs} songs x {args.seconds:.0f} s, teacher-forced over the float32 "
          f"reference's greedy answer (up to {args.steps} tokens), {os.cpu_count()} CPUs")
    print("| run | GGUF MB | mean KL vs float32 | top-1 agreement | first-step max logit error (std) |")
    print("|---|---|---|---|---|")
    table = {}
    for name, per_song in rows.items():
        kl = float(np.mean([r["kl"] for r in per_song]))
        top1 = float(np.mean([r["top1"] for r in per_song]))
        first = float(np.max([r["first_err_std"] for r in per_song]))
        table[name] = {"kl": kl, "top1": top1, "first_err_std": first, "gguf_bytes": sizes.get(name),
                       "steps": [r["steps"] for r in per_song]}
        size = f"{sizes[name] / 1e6:.1f}" if name in sizes else ""
        print(f"| {name} | {size} | {kl:.2e} | {100 * top1:.1f} % | {first:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
