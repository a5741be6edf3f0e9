#!/usr/bin/env python3
"""Songs per hour when tagging a library: `batch --tags` as it was (one JSON answer, free text)
beside `batch --tags --vocabulary builtin` (genre, mood and instruments ranked, the rest as
JSON) and the same with `--excerpt 30`, on the same generated songs, in one run.

    python scripts/bench_library.py --preset full --songs 4 --work /path/to/work   # the real size
    python scripts/bench_library.py --preset tiny --songs 3 --lengths 20,40          # a smoke test

Each run is a fresh `mufun-local batch` process into its own journal (wall time includes
loading the models; the encoder engines are timed once beforehand, as `convert` does), one
after the other; then the vocabulary run again on its journal (what a resumed run costs).
Songs are generated music of realistic lengths (default 2-6 minutes). Prints a Markdown table
(songs/hour, the ratio to today's, peak RSS, what 30,000 songs would take) and where the time
goes per song, and writes JSON (--json). The excerpt's accuracy cost is not measured here:
random weights cannot say it (docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import measured  # noqa: E402
from bench_audio import make_song  # noqa: E402

RUNS = {  # name -> extra batch arguments
    "today: --tags (free-text JSON)": [],
    "--tags --vocabulary builtin": ["--vocabulary", "builtin"],
    "--tags --vocabulary builtin --excerpt 30": ["--vocabulary", "builtin", "--excerpt", "30"],
}


def journal_times(path: Path) -> dict[str, float]:
    """Seconds per song spent in each stage, from a journal's records (answered ones)."""
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs = [r for r in recs if r.get("error") is None]
    out: dict[str, float] = {}
    for r in recs:
        for k, v in (r.get("timings") or {}).items():
            out[k] = out.get(k, 0.0) + v
        out["answer (model)"] = out.get("answer (model)", 0.0) + (r.get("seconds") or 0.0)
    return {k: v / max(1, len(recs)) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("tiny", "small", "full"), default="small")
    ap.add_argument("--model", help="a converted model folder instead of converting the preset")
    ap.add_argument("--songs", type=int, default=4)
    ap.add_argument("--lengths", default="150,240,360,120,300,210", help="song lengths in seconds, used in turn")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--work", help="keep checkpoints, models and songs here (reused between runs)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="mufun-bench-library-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MUFUN_HOME=str(work / "home"))
    os.environ["MUFUN_HOME"] = env["MUFUN_HOME"]
    model = Path(args.model) if args.model else work / f"model-{args.preset}"
    if not (model / "manifest.json").exists():
        from mufun_local.synthetic import generate
        ckpt = work / f"ckpt-{args.preset}"
        if not (ckpt / "config.json").exists():
            print(f"generating the {args.preset} checkpoint ...", file=sys.stderr)
            generate(ckpt, args.preset, seed=0)
        print("converting ...", file=sys.stderr)
        measured([sys.executable, "-m", "mufun_local", "convert", str(ckpt), str(model), "--force", "-q"], env)
    from mufun_local.encoder.choice import choose
    from mufun_local.paths import encoder_choice_file
    choose(model / "encoder", cache_file=encoder_choice_file())  # the one-off measurement, before any timing

    lengths = [float(x) for x in args.lengths.split(",") if x.strip()]
    library = work / f"library-{args.songs}"
    library.mkdir(exist_ok=True)
    for i in range(args.songs):
        song = library / f"song{i:03d}.wav"
        if not song.exists():
            make_song(song, lengths[i % len(lengths)], 44100, seed=100 + i)
    total_min = sum(lengths[i % len(lengths)] for i in range(args.songs)) / 60

    base = [sys.executable, "-m", "mufun_local", "batch", str(library), "-m", str(model), "--tags", "-q",
            "--threads", str(args.threads)]
    results = {}
    for name, extra in RUNS.items():
        out = work / f"run-{len(results)}.jsonl"
        out.unlink(missing_ok=True)
        print(f"{name} ...", file=sys.stderr)
        r = measured(base + ["--out", str(out)] + extra, env)
        results[name] = {"wall": r["wall"], "rss_mb": r["rss_mb"], "per_song": journal_times(out),
                         "songs_per_hour": args.songs / r["wall"] * 3600}
    resumed = measured(base + ["--out", str(work / "run-1.jsonl")] + RUNS["--tags --vocabulary builtin"], env)

    today = results["today: --tags (free-text JSON)"]["songs_per_hour"]
    print(f"\n{model.name}: {args.songs} songs, {total_min:.1f} min of audio, {os.cpu_count()} CPUs, "
          f"threads {args.threads or 'all'}")
    print("| run | wall s | songs/hour | vs today | peak RSS MB | 30,000 songs |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        days = 30000 / r["songs_per_hour"] / 24
        print(f"| {name} | {r['wall']:.1f} | {r['songs_per_hour']:.0f} | {r['songs_per_hour'] / today:.2f}x | "
              f"{r['rss_mb']:,.0f} | {days:.1f} days |")
    print(f"| resumed vocabulary run (nothing left to do) | {resumed['wall']:.1f} | | | {resumed['rss_mb']:,.0f} | |")
    print("\nper song, seconds (from the journals):")
    for name, r in results.items():
        print(f"- {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["per_song"].items())))
    if args.json:
        Path(args.json).write_text(json.dumps({"songs": args.songs, "minutes": total_min, "runs": results,
                                               "resumed_wall": resumed["wall"]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
