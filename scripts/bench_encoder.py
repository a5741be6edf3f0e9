#!/usr/bin/env python3
"""Encoder speed: every backend (hidden states 0/7/15/32) vs transformers' WhisperEncoder.

Runs everything in this one process, one after the other, on the same log-mel windows of
real Whisper-large-v3 dimensions (the `small` preset's encoder, random weights), and prints
seconds per 30 s window, hs32 error against transformers float32, and ratios against
transformers float32 and bfloat16; then what `--encoder-backend auto` picks here.

    python scripts/bench_encoder.py [--windows 2] [--threads 2] [--ckpt DIR]

Needs the `reference` extra (torch, transformers) for the baseline, and the onnxruntime and
openvino engines for those rows (a backend that is not installed is left out).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up (first call pays allocations and lazy init)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="an original-format checkpoint (default: generate the small preset)")
    ap.add_argument("--windows", type=int, default=2, help="30 s windows per call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from mufun_local.audio import features
    from mufun_local.convert.read_checkpoint import Checkpoint
    from mufun_local.convert.write_encoder import write_encoder
    from mufun_local.devices import cpu_signature
    from mufun_local.encoder import choice as encoder_choice
    from mufun_local.encoder.backends import get, load_encoder
    from mufun_local.synthetic import generate

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mufun-bench-"))
    ckpt_dir = Path(args.ckpt) if args.ckpt else generate(work / "small", "small", seed=0)
    ckpt = Checkpoint(ckpt_dir)
    artifacts = ("ctranslate2", "onnx") if get("onnxruntime").installed() else ("ctranslate2",)
    write_encoder(ckpt, work / "encoder", "float16", artifacts, onnx_int8="onnx" in artifacts)
    rng = np.random.default_rng(0)
    t = np.arange(30 * 16000) / 16000
    windows = [(0.3 * np.sin(2 * np.pi * (220 + 40 * k) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
               for k in range(args.windows)]
    mel = features.log_mel(windows)

    ref = WhisperEncoder(WhisperConfig(**ckpt.config["vision_config"])).eval()
    prefix = "vision_tower._vision_tower."
    ref.load_state_dict({k[len(prefix):]: torch.from_numpy(ckpt.get(k)) for k in ckpt.tensors if k.startswith(prefix)})
    x = torch.from_numpy(mel)

    def run_ref(model, inp):
        with torch.no_grad():
            return model(inp, output_hidden_states=True).hidden_states

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    rows, errors = {}, {}
    truth = run_ref(ref, x)[32].float().numpy()
    rows["transformers float32"] = best_of(lambda: run_ref(ref, x), args.repeat)
    ref_bf16 = ref.to(torch.bfloat16)
    rows["transformers bfloat16"] = best_of(lambda: run_ref(ref_bf16, x.to(torch.bfloat16)), args.repeat)
    errors["transformers bfloat16"] = rel(run_ref(ref_bf16, x.to(torch.bfloat16))[32].float().numpy(), truth)
    del ref, ref_bf16
    for backend in ("ctranslate2", "onnxruntime", "openvino"):
        if not get(backend).installed():
            print(f"({backend} not installed: left out)", file=sys.stderr)
            continue
        for ct in ("bfloat16", "float32") if backend == "openvino" else ("int8", "float32"):
            enc = load_encoder(work / "encoder", backend, "cpu", ct, threads=args.threads, batch_size=args.windows)
            rows[f"{backend} {ct}"] = best_of(lambda: enc.hidden_states(mel), args.repeat)
            errors[f"{backend} {ct}"] = rel(enc.hidden_states(mel).hs32, truth)
            del enc

    choice = encoder_choice.choose(work / "encoder", "auto", "cpu", None, args.threads, None,
                                   lambda m: print(m, file=sys.stderr))
    picked = f"{choice.backend} {choice.compute_type}"
    fp32, bf16 = rows["transformers float32"], rows["transformers bfloat16"]
    print(f"\nEncoder, hidden states 0/7/15/32, {args.windows} x 30 s windows per call, "
          f"{args.threads} threads, {cpu_signature()}")
    print("| engine | s / window | hs32 rel. error | vs transformers fp32 | vs transformers bf16 |")
    print("|---|---|---|---|---|")
    for name, sec in rows.items():
        err = "-" if name == "transformers float32" else f"{errors[name]:.1e}"
        print(f"| {name}{' (auto)' if name == picked else ''} | {sec / args.windows:.2f} | {err} "
              f"| {fp32 / sec:.2f}x | {bf16 / sec:.2f}x |")
    print(f"\nauto picks {picked}: {fp32 / rows[picked]:.2f}x transformers float32, "
          f"{bf16 / rows[picked]:.2f}x transformers bfloat16")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds_per_window": {k: v / args.windows for k, v in rows.items()},
                                               "hs32_rel_error": errors, "auto": picked}, indent=2))
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
