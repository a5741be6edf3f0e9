#!/usr/bin/env python3
"""Write a synthetic MuFun checkpoint in the original release's format (random weights).

    python scripts/make_synthetic_mufun.py --preset tiny --seed 0 OUT_DIR

Presets: tiny (tests, seconds), small (real encoder dims + Qwen3-0.6B shape, benchmarks),
full (exact MuFun-Base dims, ~18 GB, by hand). Format notes: mufun_local/synthetic.py.
"""
import argparse
import sys
import time

from mufun_local.synthetic import PRESETS, generate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("out_dir")
    args = ap.parse_args()
    t0 = time.perf_counter()
    generate(args.out_dir, args.preset, args.seed, progress=lambda m: print(m, file=sys.stderr))
    print(f"{args.preset} checkpoint written to {args.out_dir} in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
