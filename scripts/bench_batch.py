#!/usr/bin/env python3
"""Batch throughput: `mufun-local batch` locally vs `--ray local`, files per minute.

Generates a synthetic checkpoint (or takes --ckpt) and N songs, converts once, then runs
the same batch twice, one after the other, each as a fresh `mufun-local` process into its
own output file (wall time includes loading the models, and Ray's start-up for --ray),
checks that both outputs hold the same records, and prints files/minute and the ratio.

    python scripts/bench_batch.py --preset tiny --files 24
    python scripts/bench_batch.py --preset small --files 6

Needs the `ray` extra.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_audio import make_song  # noqa: E402


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def records(path: Path) -> list[str]:
    keys = ("path", "question", "answer", "error")
    return sorted(json.dumps({k: r[k] for k in keys}) for r in map(json.loads, path.read_text().splitlines()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    ap.add_argument("--ckpt", help="an original-format checkpoint instead of generating the preset")
    ap.add_argument("--files", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each song")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--work", help="working directory (default: a new temporary one)")
    args = ap.parse_args()

    from mufun_local.convert.run import convert, default_encoder_backends
    from mufun_local.encoder.choice import choose
    from mufun_local.synthetic import generate

    work = Path(args.work or tempfile.mkdtemp(prefix="mufun-bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MUFUN_HOME=str(work / "home"))
    os.environ["MUFUN_HOME"] = env["MUFUN_HOME"]
    ckpt = Path(args.ckpt) if args.ckpt else work / args.preset
    if not args.ckpt and not (ckpt / "config.json").exists():
        generate(ckpt, args.preset, seed=0)
    model = work / f"model-{ckpt.name}"
    if not (model / "manifest.json").exists():
        convert(str(ckpt), model, quant="q4_k_m", encoder_backends=default_encoder_backends(), force=True, quiet=True)
    from mufun_local.paths import encoder_choice_file
    choose(model / "encoder", cache_file=encoder_choice_file())  # the one-off measurement, before any timing
    songs = work / "songs"
    songs.mkdir(exist_ok=True)
    for i in range(args.files):
        if not (songs / f"song{i:03d}.wav").exists():
            make_song(songs / f"song{i:03d}.wav", args.seconds, 44100, seed=i)

    base = [sys.executable, "-m", "mufun_local", "batch", str(songs), "-m", str(model), "-q",
            "--question", "What genre is this?", "--max-tokens", str(args.max_tokens), "--temperature", "0"]
    results = {}
    for name, extra in (("local", []), ("ray local", ["--ray", "local"])):
        out = work / f"{name.replace(' ', '-')}.jsonl"
        out.unlink(missing_ok=True)
        results[name] = (run(base + ["--out", str(out)] + extra, env), out)
    same = records(results["local"][1]) == records(results["ray local"][1])

    print(f"\nbatch, {args.files} x {args.seconds:.0f} s songs, 1 question, {args.max_tokens} tokens, "
          f"{ckpt.name} checkpoint, {os.cpu_count()} CPUs")
    print("| run | wall s | files / minute |")
    print("|---|---|---|")
    for name, (sec, _) in results.items():
        print(f"| {name} | {sec:.1f} | {args.files / sec * 60:.1f} |")
    print(f"\nray local / local throughput: {results['local'][0] / results['ray local'][0]:.2f}x; "
          f"same records: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
