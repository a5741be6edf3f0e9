#!/usr/bin/env python3
"""End-to-end benchmark: mufun-local vs the PyTorch reference, side by side, in one run.

    python scripts/bench.py --preset full --seconds 103.5 --scaling ''   # the real size (~18 GB on disk)
    python scripts/bench.py --preset small --seconds 180
    python scripts/bench.py --preset tiny --seconds 10 --max-tokens 4 --scaling 10   # CI smoke test

Each side runs as a child process (so its peak RSS is its own) on the same generated
input, one after the other:
  - `mufun-local ask --json` (greedy, fixed --max-tokens), first question with empty caches,
  - a different question about the same song in a new process (the audio prefix's KV
    state comes from disk: only the question and the answer are evaluated),
  - `mufun-local batch` with 1 and with 5 questions about the song,
  - the reference in float32 (skipped with the reason when it cannot fit in memory) and in
    bfloat16 (scripts/reference.py),
then, in this process: embedding prefill vs token prefill of the same length in llama.cpp,
generation speed vs the memory-bandwidth bound, and how each stage grows with the audio
length (--scaling). Prints Markdown tables and writes JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
QUESTION = "Describe this music: genre, mood, instruments and tempo."
OTHER_QUESTIONS = ["Which instruments can you hear?", "What is the mood of this song?",
                   "Is there singing, and in which language?", "How does the song develop over time?"]


def make_song(path: Path, seconds: float, rate: int = 44100) -> Path:
    sys.path.insert(0, str(HERE))
    from bench_audio import make_song as _make
    return _make(path, seconds, rate)


def measured(cmd: list[str], env=None) -> dict:
    """Run `cmd` under a fresh Python parent so RUSAGE_CHILDREN is that command's alone."""
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "t0 = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t0\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': p.returncode, 'wall': wall, 'rss_mb': rss, 'out': p.stdout, 'err': p.stderr[-3000:]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    res = json.loads(proc.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed:\n{res['err']}")
    return res


def fp32_skip_reason(ckpt: Path) -> str | None:
    """Why the float32 reference cannot run here (twice the bf16 checkpoint, plus room), or None."""
    need = 2 * sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) * 1.15
    avail = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        return None
    if avail and need > avail:
        return f"float32 needs ~{need / 1e9:.0f} GB, {avail / 1e9:.0f} GB available"
    return None


def bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9  # read + write


def llm_micro(model_dir: Path, n_rows: int, gen_tokens: int, threads: int) -> dict:
    """Embedding prefill vs token prefill of the same length; generation tokens/s."""
    from mufun_local.format.model_dir import ModelDir
    from mufun_local.llm.llama import LLM, Sampling

    md = ModelDir.open(model_dir)
    llm = LLM(md.llm_file, threads=threads)
    llm.open_context(n_rows + gen_tokens + 64, 512)
    rng = np.random.default_rng(0)
    vocab_text = llm.tokenize("the quick brown fox jumps over the lazy dog " * 8)
    tokens = [vocab_text[i % len(vocab_text)] for i in range(n_rows)]
    emb = (rng.standard_normal((n_rows, llm.n_embd)) * 0.02).astype(np.float32)

    def prefill_tokens():
        llm.reset()
        llm.eval_tokens(tokens)

    def prefill_embeddings():
        llm.reset()
        llm.eval_embeddings(emb, logits_at_end=True)

    times = {}
    for name, fn in (("tokens", prefill_tokens), ("embeddings", prefill_embeddings)):
        fn()
        t0 = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t0
    llm.reset()
    llm.eval_tokens(tokens[:32])
    t0 = time.perf_counter()
    n = sum(1 for _ in llm.generate(Sampling(temperature=0.0), gen_tokens, stop_ids=set()))
    gen_s = time.perf_counter() - t0
    model_bytes = md.llm_file.stat().st_size
    llm.close()
    return {"rows": n_rows, "prefill_tokens_s": times["tokens"], "prefill_embeddings_s": times["embeddings"],
            "embeddings_vs_tokens": times["embeddings"] / times["tokens"],
            "generate_tokens": n, "generate_tok_s": n / gen_s, "model_bytes": model_bytes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "small", "full"], default="small")
    ap.add_argument("--audio", help="your own file instead of the generated song")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--quant", default=None, help="LLM weight type (default: convert's)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoder-backend", default="auto", help="ours: auto, ctranslate2, onnxruntime or openvino")
    ap.add_argument("--scaling", default="30,180,600", help="audio lengths (s) for the scaling table; '' to skip")
    ap.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference runs")
    ap.add_argument("--micro-rows", type=int, default=512, help="rows for the embedding-vs-token prefill check")
    ap.add_argument("--work", help="keep checkpoints/models here (reused between runs)")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()

    from mufun_local.encoder.choice import choose
    from mufun_local.synthetic import generate

    work = Path(args.work or tempfile.mkdtemp(prefix="mufun-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"ckpt-{args.preset}"
    if not (ckpt / "model.safetensors.index.json").is_file():
        print(f"generating the {args.preset} checkpoint ...", file=sys.stderr)
        generate(ckpt, args.preset, seed=0)
    from mufun_local.format import weights
    args.quant = args.quant or weights.DEFAULT
    model = work / f"model-{args.preset}-{args.quant}"
    conversion = None
    if not (model / "manifest.json").is_file():  # as a user converts: the CLI, its defaults, its own process
        print(f"converting ({args.quant}) ...", file=sys.stderr)
        conversion = measured([sys.executable, "-m", "mufun_local", "convert", str(ckpt), str(model),
                               "--quant", args.quant, "--force", "-q"], dict(os.environ, MUFUN_HOME=str(work / "home")))
        conversion.pop("out")
    audio = Path(args.audio) if args.audio else make_song(work / f"song-{int(args.seconds)}s.wav", args.seconds)

    env = dict(os.environ, MUFUN_HOME=str(work / "home"), OMP_NUM_THREADS=str(args.threads))
    ours_cmd = [sys.executable, "-m", "mufun_local", "ask", "-m", str(model), str(audio), QUESTION,
                "--json", "--temperature", "0", "--max-tokens", str(args.max_tokens), "--no-cache",
                "--threads", str(args.threads), "--encoder-backend", args.encoder_backend, "-q"]
    # auto's one-off measurement happens here, not inside the timed run
    choice = choose(model / "encoder", args.encoder_backend, "cpu", None, args.threads,
                    work / "home" / "encoder-choice.json", lambda m: print(m, file=sys.stderr))
    results: dict = {"machine": platform.processor() or platform.machine(), "preset": args.preset,
                     "quant": args.quant, "audio": str(audio), "threads": args.threads,
                     "encoder": f"{choice.backend} {choice.compute_type}", "convert": conversion}
    print("running mufun-local ...", file=sys.stderr)
    import shutil
    for cache in ("embeddings", "prefixes"):  # the first question finds them empty
        shutil.rmtree(work / "home" / cache, ignore_errors=True)
    ours = measured([c for c in ours_cmd if c != "--no-cache"], env)
    ours["json"] = json.loads(ours.pop("out"))
    results["ours"] = ours
    print("running mufun-local: another question, new process ...", file=sys.stderr)
    again_cmd = [c if c != QUESTION else OTHER_QUESTIONS[0] for c in ours_cmd if c != "--no-cache"]
    again = measured(again_cmd, env)
    again["json"] = json.loads(again.pop("out"))
    results["ours_again"] = again
    results["batch"] = {}
    for n in (1, 5):
        print(f"running mufun-local batch, {n} question(s) ...", file=sys.stderr)
        out = work / f"batch-{n}.jsonl"
        out.unlink(missing_ok=True)
        qs = [QUESTION, *OTHER_QUESTIONS][:n]
        cmd = [sys.executable, "-m", "mufun_local", "batch", "-m", str(model), str(audio),
               *[a for q in qs for a in ("--question", q)], "--out", str(out), "--temperature", "0",
               "--max-tokens", str(args.max_tokens), "--threads", str(args.threads),
               "--encoder-backend", args.encoder_backend, "-q"]
        r = measured(cmd, env)
        r.pop("out")
        results["batch"][n] = r
    if not args.no_reference:
        for label, extra in (("reference_fp32", []), ("reference_bf16", ["--bf16"])):
            reason = fp32_skip_reason(ckpt) if label == "reference_fp32" else None
            if reason:
                print(f"skipping the reference ({label}): {reason}", file=sys.stderr)
                results[label] = {"skipped": reason}
                continue
            print(f"running the reference ({label}) ...", file=sys.stderr)
            cmd = [sys.executable, str(HERE / "reference.py"), "--model", str(ckpt), str(audio), QUESTION,
                   "--max-tokens", str(args.max_tokens), *extra]
            r = measured(cmd, env)
            r["json"] = json.loads(r.pop("out"))
            results[label] = r

    print("measuring prefill and generation ...", file=sys.stderr)
    rows = max(64, min(args.micro_rows, results["ours"]["json"]["audio_tokens"]))
    results["llm"] = llm_micro(model, rows, 64, args.threads)
    bw = bandwidth_gbs()
    results["bandwidth_gbs"] = bw
    bound = bw * 1e9 / results["llm"]["model_bytes"]
    results["llm"]["bandwidth_bound_tok_s"] = bound

    scaling = []
    for sec in [float(s) for s in args.scaling.split(",") if s.strip()]:
        song = make_song(work / f"song-{int(sec)}s.wav", sec)
        cmd = ours_cmd.copy()
        cmd[cmd.index(str(audio))] = str(song)
        cmd[cmd.index("--max-tokens") + 1] = "8"
        r = measured(cmd, env)
        j = json.loads(r["out"])
        scaling.append({"seconds": sec, "wall": r["wall"], "rss_mb": r["rss_mb"], **j["timings"]})
    results["scaling"] = scaling

    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict) -> None:
    o = r["ours"]
    print(f"\n### {r['preset']} preset, {r['quant']}, {Path(r['audio']).name}, {r['threads']} threads, {r['machine']}\n")
    print("| run | wall s | peak RSS MB | ours is faster by | ours uses (memory) | first 4 tokens |")
    print("|---|---|---|---|---|---|")
    print(f"| mufun-local ({r['encoder']} encoder, {r['quant']} LLM) | {o['wall']:.1f} | {o['rss_mb']:.0f} | | | |")
    for label in ("reference_fp32", "reference_bf16"):
        if label in r and "skipped" in r[label]:
            print(f"| {label.replace('_', ' ')} | skipped: {r[label]['skipped']} | | | | |")
        elif label in r:
            x = r[label]
            same = "same tokens" if x["json"]["tokens"][:4] == o["json"]["tokens"][:4] else "tokens differ"
            print(f"| {label.replace('_', ' ')} | {x['wall']:.1f} | {x['rss_mb']:.0f} | "
                  f"{x['wall'] / o['wall']:.2f}x | {o['rss_mb'] / x['rss_mb']:.2f} of it | {same} |")
    a = r["ours_again"]
    ref = r.get("reference_bf16", {})
    vs = f" — {ref['wall'] / a['wall']:.1f}x faster than the bf16 reference's first" if "wall" in ref else ""
    print(f"\nAnother question about the same song, new process (prefix from disk): {a['wall']:.1f} s, "
          f"peak {a['rss_mb']:.0f} MB; {o['wall'] / a['wall']:.1f}x faster than our first{vs}.")
    b = r["batch"]
    print(f"batch, one song: 1 question {b[1]['wall']:.1f} s, 5 questions {b[5]['wall']:.1f} s "
          f"({b[5]['wall'] / b[1]['wall']:.2f}x the time of 1).")
    if r.get("convert"):
        c = r["convert"]
        print(f"convert (the CLI's defaults): {c['wall']:.1f} s, peak {c['rss_mb']:.0f} MB.")
    t = o["json"]["timings"]
    print("\n| stage | seconds |")
    print("|---|---|")
    for k in ("decode", "features", "encoder", "connector", "prefill", "prefix_save", "generate"):
        if k in t:
            print(f"| {k} | {t[k]:.2f} |")
    ta = r["ours_again"]["json"]["timings"]
    print("| *another question, new process:* | |")
    for k in ("prefix_load", "prefill", "generate"):
        print(f"| {k} | {ta.get(k, 0.0):.2f} |")
    n_prompt = o["json"]["audio_tokens"] + o["json"]["prompt_tokens"]
    n_gen = len(o["json"]["tokens"])
    print(f"| prefill rate | {n_prompt / max(t['prefill'], 1e-9):.0f} tokens/s ({n_prompt} audio + text) |")
    print(f"| generation rate | {n_gen / max(t['generate'], 1e-9):.1f} tokens/s |")
    m = r["llm"]
    print(f"\nllama.cpp, {m['rows']} rows: embedding prefill {m['prefill_embeddings_s']:.2f} s vs token prefill "
          f"{m['prefill_tokens_s']:.2f} s (ratio {m['embeddings_vs_tokens']:.3f}); generation "
          f"{m['generate_tok_s']:.1f} tok/s = {m['generate_tok_s'] / m['bandwidth_bound_tok_s']:.0%} of the "
          f"bandwidth bound ({r['bandwidth_gbs']:.1f} GB/s / {m['model_bytes'] / 1e6:.0f} MB = "
          f"{m['bandwidth_bound_tok_s']:.1f} tok/s)")
    if r["scaling"]:
        print("\n| audio s | wall s | peak RSS MB | decode | features | encoder | connector | prefill | generate |")
        print("|---|---|---|---|---|---|---|---|---|")
        for s in r["scaling"]:
            print(f"| {s['seconds']:.0f} | {s['wall']:.1f} | {s['rss_mb']:.0f} | " +
                  " | ".join(f"{s[k]:.2f}" for k in ("decode", "features", "encoder", "connector", "prefill", "generate")) + " |")


if __name__ == "__main__":
    sys.exit(main())
