#!/usr/bin/env python3
"""The PyTorch reference of MuFun (the parity oracle), from the command line.

    python scripts/reference.py --model CKPT AUDIO [AUDIO...] "QUESTION" --max-tokens 32

CKPT is a checkpoint in the original format (real or synthetic). Prints JSON with the
greedy answer text and token ids. Needs the `reference` extra and the ffmpeg CLI (the
original decodes with it).
"""
import argparse
import json
import sys

import torch

from mufun_reference import ReferenceMuFun


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory in the original format")
    ap.add_argument("inputs", nargs="+", metavar="AUDIO... QUESTION")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--bf16", action="store_true", help="run in bfloat16 as the original does on GPU")
    args = ap.parse_args()
    if len(args.inputs) < 2:
        ap.error("give at least one AUDIO and a QUESTION")
    *audios, question = args.inputs
    model = ReferenceMuFun(args.model, torch.bfloat16 if args.bf16 else torch.float32)
    ans = model.ask(audios, question, max_tokens=args.max_tokens)
    print(json.dumps({"text": ans.text, "tokens": ans.tokens, "prompt_tokens": ans.prompt_tokens,
                      "audio_tokens": ans.audio_tokens}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
