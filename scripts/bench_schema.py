#!/usr/bin/env python3
"""What a schema-constrained answer costs: generation tokens/s with `batch --tags`'s schema
(llama.cpp's grammar sampler) vs free text, side by side in one process on one song.

The audio prefix is evaluated once and kept (the prefix cache), so both answers are timed
from the same state; each is generated --rounds times alternately and the medians compared.
Greedy, a fixed --max-tokens. The grammar sampler looks at every vocabulary row each step,
so its cost grows with the vocabulary (the presets have Qwen3's 151,936 rows; the synthetic
tokenizer's pieces are shorter than the real ones).

    python scripts/bench_schema.py --preset small
    python scripts/bench_schema.py --model DIR          # a converted model
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_audio import make_song  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("tiny", "small", "full"), default="small")
    ap.add_argument("--model", help="a converted model directory instead of generating the preset")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", help="working directory (default: a new temporary one)")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="mufun-bench-schema-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MUFUN_HOME"] = str(work / "home")
    from mufun_local.format.model_dir import ModelDir
    from mufun_local.llm.grammar import schema_grammar
    from mufun_local.tags import TAGS_QUESTION, TAGS_SCHEMA
    from mufun_local.llm.llama import Sampling
    from mufun_local.model import Model
    from mufun_local.options import Request

    model = Path(args.model) if args.model else work / f"model-{args.preset}"
    if not args.model and not (model / "manifest.json").exists():
        from mufun_local.convert.run import convert
        from mufun_local.synthetic import generate
        ckpt = work / args.preset
        if not (ckpt / "config.json").exists():
            generate(ckpt, args.preset, seed=0)
        convert(str(ckpt), model, quant="q4_k_m", force=True, quiet=True)
    song = make_song(work / "song.wav", args.seconds, 44100, seed=0)
    grammar = schema_grammar(TAGS_SCHEMA)

    ours = Model(ModelDir.open(model), caches=None, quiet=True, keep_audio_models=True)
    runs: dict[str, list[float]] = {"free text": [], "tags schema": []}
    tokens: dict[str, int] = {}
    try:
        for r in range(args.rounds + 1):  # round 0 fills the caches and is not counted
            for name, g in (("free text", None), ("tags schema", grammar)):
                req = Request(args.max_tokens, Sampling(temperature=0.0, grammar=g))
                res = ours.ask(song, TAGS_QUESTION, request=req).result()
                if r:
                    runs[name].append(len(res.tokens) / res.timings["generate"])
                    tokens[name] = len(res.tokens)
    finally:
        ours.close()

    print(f"\n{model.name}, {args.seconds:.0f} s song, greedy, up to {args.max_tokens} tokens, "
          f"median of {args.rounds}, {os.cpu_count()} CPUs")
    print("| answer | tokens | generate tokens/s |")
    print("|---|---|---|")
    for name, rates in runs.items():
        print(f"| {name} | {tokens[name]} | {statistics.median(rates):.1f} |")
    ratio = statistics.median(runs["tags schema"]) / statistics.median(runs["free text"])
    print(f"\nschema / free text tokens/s: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
