#!/usr/bin/env python3
"""The LLM's 4-bit recipes side by side against the model's F16 GGUF, in one run: GGUF size,
prefill rows/s and tokens/s with llama.cpp's repacking on and off, peak RSS, and how far
each moves the next-token distributions from F16's.

    python scripts/bench_quant.py MODEL_DIR --work DIR [--songs 3 --seconds 20 --steps 32]

MODEL_DIR is a conversion whose GGUF is F16 (`convert --quant f16`, or any with --keep-f16).
Each recipe is made from that F16 GGUF with llama.cpp's quantizer into --work (kept there,
reused by a later run). The songs' audio embeddings are computed once with the model's
encoder and connector, so every GGUF sees the same rows. F16 answers each song greedily
(`--steps` tokens); every GGUF is then teacher-forced through that answer: mean KL(F16 ||
recipe) over the steps, top-1 agreement, and the first step's largest logit error in units
of the logits' standard deviation. Prefill is timed on the songs' audio rows after the
template's first text; tokens/s on the teacher-forced steps (one token per decode, as in
generation). Each GGUF and repack setting runs in its own process (its peak RSS is its own).
Random weights have no outlier channels and misjudge what quantization loses on the real
model; they rank recipes and catch a broken one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

QUESTION = "Describe this music: genre, mood, instruments and tempo."
# name -> (llama.cpp file type, output.weight type, token_embd.weight type); None: the type's
# own (q4_k_m, q4_0 and iq4_xs keep output.weight at Q6_K and token_embd at their base type)
RECIPES = {
    "q4_k_m": ("q4_k_m", None, None),
    "q4_0": ("q4_0", None, None),
    "iq4_xs": ("iq4_xs", None, None),
    "q4_k_m+imatrix": ("q4_k_m", None, None),  # with an importance matrix from other songs
    "q4_k_m+out_q8_0": ("q4_k_m", "q8_0", None),
    "q4_k_m+embd_q6_k": ("q4_k_m", None, "q6_k"),
    "q4_k_m+out_embd_q8_0": ("q4_k_m", "q8_0", "q8_0"),
}


def make_recipe(f16: Path, name: str, work: Path, threads: int, imatrix=None) -> tuple[Path, float]:
    """The recipe's GGUF in `work` (made once) and the seconds the quantizer took (0 if reused)."""
    from mufun_local.convert.write_gguf import quantize
    ftype, output, embedding = RECIPES[name]
    dst = work / f"llm-{name}.gguf"
    if dst.exists():
        return dst, 0.0
    tmp = dst.with_suffix(".partial")
    t0 = time.perf_counter()
    quantize(f16, tmp, ftype, threads, output_type=output, embedding_type=embedding,
             imatrix=imatrix() if name.endswith("+imatrix") else None)
    tmp.rename(dst)
    return dst, time.perf_counter() - t0


def song_embeddings(model_dir: Path, songs: int, seconds: float, work: Path) -> list[np.ndarray]:
    """Audio embeddings of `songs` generated songs (cached in `work`)."""
    cache = work / f"embeddings-{songs}x{seconds:g}s-seed0.npz"
    if cache.exists():
        with np.load(cache) as z:
            return [z[f"song{i}"] for i in range(songs)]
    from bench_audio import make_song
    from mufun_local.format.model_dir import ModelDir
    from mufun_local.model import Model

    out = []
    with Model(ModelDir.open(model_dir), caches=None, threads=2) as model, tempfile.TemporaryDirectory() as tmp:
        for i in range(songs):
            path = make_song(Path(tmp) / f"song{i}.wav", seconds, 44100, seed=i)
            e = model.embed(path).embeddings
            out.append(e[: int(round(seconds * 10))])  # the rows of the audio itself, not the padding
    np.savez(cache, **{f"song{i}": e for i, e in enumerate(out)})
    return out


def calibration_imatrix(args, f16: Path, work: Path):
    """The importance matrix the converter makes by default (mufun_local.store.imatrix.calibrator:
    `--calibration-songs` generated songs, other than the measured ones, `--seconds` each, one
    calibration question each), cached in `work`."""
    from mufun_local.store import imatrix
    from mufun_local.format.model_dir import ModelDir

    cache = work / "imatrix.npz"
    if cache.exists():
        return imatrix.load(cache)
    print(f"importance matrix from {args.calibration_songs} song(s) ...", file=sys.stderr)
    t0 = time.perf_counter()
    im, _ = imatrix.calibrator(songs=args.calibration_songs, seconds=args.seconds,
                               threads=args.threads)(ModelDir.open(args.model_dir), f16)
    print(f"  {time.perf_counter() - t0:.0f} s, {len(im)} matrices", file=sys.stderr)
    imatrix.save(cache, im)
    return im


def child(args) -> int:
    """One GGUF, one repack setting: prefill, teacher-forced steps (or greedy ones for F16)."""
    from mufun_local.llm import prompt
    from mufun_local.llm.llama import LLM
    from mufun_local.format.model_dir import ModelDir

    md = ModelDir.open(args.model_dir)
    tmpl = prompt.Template.of(md.manifest)
    with np.load(args.embeddings) as z:
        songs = [z[k] for k in sorted(z.files)]
    forced = None
    if args.forced:
        with np.load(args.forced) as z:
            forced = [z[f"tokens{i}"] for i in range(len(songs))]
    t0 = time.perf_counter()
    llm = LLM(args.gguf, threads=args.threads)
    load_s = time.perf_counter() - t0
    head, tail = prompt.tokenize(prompt.build(QUESTION, 1, tmpl), llm.tokenize)
    out = {"load_s": load_s, "prefill_rows": 0, "prefill_s": 0.0, "steps": 0, "step_s": 0.0}
    logits, tokens = {}, {}
    for i, emb in enumerate(songs):
        llm.open_context(len(head) + len(emb) + len(tail) + args.steps + 8, 512)
        if i == 0:  # page the weights in (and let repacking happen) before anything is timed
            llm.eval_embeddings(emb[:32])
            llm.reset()
        llm.eval_tokens(head, logits_at_end=False)
        t0 = time.perf_counter()
        llm.eval_embeddings(emb)
        out["prefill_s"] += time.perf_counter() - t0
        out["prefill_rows"] += len(emb)
        llm.eval_tokens(tail)
        rows, ids = [llm.logits()], []
        for k in range(args.steps - 1):
            t = int(forced[i][k]) if forced is not None else int(rows[-1].argmax())
            ids.append(t)
            t0 = time.perf_counter()
            llm.eval_tokens([t])
            out["step_s"] += time.perf_counter() - t0
            out["steps"] += 1
            rows.append(llm.logits())
        ids.append(int(rows[-1].argmax()))
        logits[f"logits{i}"], tokens[f"tokens{i}"] = np.stack(rows).astype(np.float32), np.array(ids)
    llm.close()
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    np.savez(args.result + ".npz", **logits, **tokens)
    Path(args.result + ".json").write_text(json.dumps(out))
    return 0


def run_child(args, gguf: Path, extra_bufts: bool, emb_file: Path, forced: Path | None, result: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--gguf", str(gguf), "--embeddings", str(emb_file),
           "--result", str(result), "--steps", str(args.steps), "--threads", str(args.threads), args.model_dir]
    if forced:
        cmd += ["--forced", str(forced)]
    env = dict(os.environ, MUFUN_LLAMA_EXTRA_BUFTS="1" if extra_bufts else "0")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:] or ''}"}
    return json.loads(Path(str(result) + ".json").read_text())


def divergence(ref: Path, run: Path) -> dict:
    with np.load(ref) as a, np.load(run) as b:
        keys = sorted(k for k in a.files if k.startswith("logits"))
        kls, top1, first = [], [], []
        for k in keys:
            p, q = a[k].astype(np.float64), b[k].astype(np.float64)
            lp = p - p.max(-1, keepdims=True)
            lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
            lq = q - q.max(-1, keepdims=True)
            lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
            kls.append(np.sum(np.exp(lp) * (lp - lq), -1))
            top1.append(p.argmax(-1) == q.argmax(-1))
            first.append(np.abs(p[0] - q[0]).max() / p[0].std())
    return {"kl": float(np.mean(np.concatenate(kls))), "top1": float(np.mean(np.concatenate(top1))),
            "first_err_std": float(np.mean(first))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--work", help="where the recipes' GGUFs and the results are kept (required)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma list of: {', '.join(RECIPES)}")
    ap.add_argument("--songs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--calibration-songs", type=int, default=4, help="songs for the importance matrix")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repack", default="auto",
                    help="llama.cpp's extra buffer types: off, on, off,on, or auto (both for the plain types, "
                         "off for the mixes: a mix repacks as its base type does)")
    ap.add_argument("--peak-gops", type=float, default=0.0, help="the CPU's int8 peak, for a fraction column")
    ap.add_argument("--json", help="write the table's rows here")
    ap.add_argument("--drop", action="store_true", help="delete each recipe's GGUF once measured (disk)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    ap.add_argument("--embeddings", help=argparse.SUPPRESS)
    ap.add_argument("--forced", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    if not args.work:
        ap.error("--work DIR is required")
    from mufun_local.format.model_dir import ModelDir
    md = ModelDir.open(args.model_dir)
    f16 = md.path / md.manifest["llm"].get("f16_file", md.manifest["llm"]["file"])
    if "f16" not in f16.name:
        raise SystemExit(f"{args.model_dir}: no F16 GGUF (convert with --quant f16 or --keep-f16)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    if set(names) - set(RECIPES):
        raise SystemExit(f"--recipes: choose from {', '.join(RECIPES)}")

    print(f"embedding {args.songs} song(s) of {args.seconds:g} s ...", file=sys.stderr)
    songs = song_embeddings(Path(args.model_dir), args.songs, args.seconds, work)
    emb_file = work / "rows.npz"
    np.savez(emb_file, **{f"song{i}": e for i, e in enumerate(songs)})
    from bench_prefill import sum_params
    n_params = sum_params(f16)

    print(f"F16 answers greedily ({args.steps} steps) ...", file=sys.stderr)
    ref = work / "result-f16"
    rows = [{"recipe": "f16", "repack": "off", "bytes": f16.stat().st_size, "quantize_s": 0.0,
             **run_child(args, f16, False, emb_file, None, ref)}]
    if "error" in rows[0]:
        raise SystemExit(f"F16 run failed: {rows[0]['error']}")
    for name in names:
        print(f"{name}: quantizing (once) ...", file=sys.stderr)
        gguf, q_s = make_recipe(f16, name, work, args.threads, imatrix=lambda: calibration_imatrix(args, f16, work))
        modes = ("off,on" if "+" not in name else "off") if args.repack == "auto" else args.repack
        for on in [m == "on" for m in modes.split(",")]:
            print(f"{name}: repack {'on' if on else 'off'} ...", file=sys.stderr)
            res = work / f"result-{name}-{'on' if on else 'off'}"
            r = run_child(args, gguf, on, emb_file, Path(str(ref) + ".npz"), res)
            if "error" not in r:
                r.update(divergence(Path(str(ref) + ".npz"), Path(str(res) + ".npz")))
            off = work / f"result-{name}-off.npz"
            if on and "error" not in r and off.exists():  # repacking must not change the answers beyond rounding
                r["vs_off"] = divergence(off, Path(str(res) + ".npz"))["kl"]
            rows.append({"recipe": name, "repack": "on" if on else "off", "bytes": gguf.stat().st_size,
                         "quantize_s": q_s, **r})
        if args.drop:
            gguf.unlink()

    print("\n| recipe | repack | GGUF GB | prefill rows/s | GOPS" + (" | of int8 peak" if args.peak_gops else "")
          + " | tokens/s | peak RSS GB | mean KL vs F16 | top-1 vs F16 | first-step max err (x std) | KL vs repack off |")
    print("|---|---|---|---|---" + ("|---" if args.peak_gops else "") + "|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['recipe']} | {r['repack']} | {r['bytes'] / 1e9:.2f} | {r['error']} |")
            continue
        rate = r["prefill_rows"] / r["prefill_s"]
        gops = 2 * n_params * rate / 1e9
        frac = f" | {gops / args.peak_gops:.1%}" if args.peak_gops else ""
        div = (f"{r['kl']:.2e} | {r['top1']:.1%} | {r['first_err_std']:.3f}" if "kl" in r else "— | — | —")
        print(f"| {r['recipe']} | {r['repack']} | {r['bytes'] / 1e9:.2f} | {rate:.1f} | {gops:.0f}{frac} | "
              f"{r['steps'] / r['step_s']:.2f} | {r['peak_rss_gb']:.1f} | {div} | "
              f"{format(r['vs_off'], '.1e') if 'vs_off' in r else '—'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
