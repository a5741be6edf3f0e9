#!/usr/bin/env python3
"""What ranking a vocabulary costs beside reading the song: one generated song through
`Model.rank` for each built-in vocabulary field (genre, mood, instruments, tempo feel, vocals),
in one process, the song read once. Prints, per stage, the rows the LLM evaluated, their
seconds and rows per second, and the ranking's share of the prefill.

    python scripts/bench_rank.py --model DIR --seconds 240 --threads 2   # a converted full-size model
    python scripts/bench_rank.py --preset tiny --seconds 20               # a smoke test

A term is scored as one path of a token trie (Model.rank): the rows are the trie's nodes that
other tokens follow (a term's closing token is scored from the logits before it, never fed);
"rows if leaves were fed" says what feeding every node would evaluate. Random weights rank
nothing meaningful, but they cost what real ones do.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_audio import make_song  # noqa: E402


def trie_rows(ids: list[list[int]], per_round: int = 32) -> tuple[int, int]:
    """(nodes with children, all nodes) of the tries Model.rank scores `ids` as, per_round a round."""
    fed = every = 0
    for r in range(0, len(ids), per_round):
        nodes: dict[tuple, bool] = {}  # path -> has children
        for toks in ids[r:r + per_round]:
            for d in range(len(toks)):
                nodes.setdefault(tuple(toks[:d + 1]), False)
                if d:
                    nodes[tuple(toks[:d])] = True
        fed += sum(nodes.values())
        every += len(nodes)
    return fed, every


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a converted model folder")
    ap.add_argument("--preset", choices=("tiny", "small", "full"), help="convert this synthetic preset instead")
    ap.add_argument("--seconds", type=float, default=240.0, help="the song's length")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--work", help="keep the checkpoint, model and song here")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not args.model and not args.preset:
        ap.error("give --model DIR or --preset")

    from mufun_local import Caches, Model
    from mufun_local.llm.prompt import answer_ids
    from mufun_local.tags import builtin_vocabulary, field_question

    work = Path(args.work or tempfile.mkdtemp(prefix="mufun-bench-rank-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model) if args.model else work / f"model-{args.preset}"
    if not (model_dir / "manifest.json").exists():
        from mufun_local.convert.run import convert
        from mufun_local.synthetic import generate
        ckpt = work / f"ckpt-{args.preset}"
        if not (ckpt / "config.json").exists():
            generate(ckpt, args.preset, seed=0)
        convert(ckpt, model_dir, quiet=True)
    song = make_song(work / f"song-{args.seconds:g}s.flac", args.seconds, 44100, seed=3)

    events: list[tuple[str, int, int, float, int]] = []  # stage, done, total, time, rows decoded by then
    rows = []
    with Model(model_dir, caches=Caches.for_batch(), threads=args.threads, quiet=True) as model:
        pipe = model.pipeline

        def progress(stage: str, done: int, total: int) -> None:
            events.append((stage, done, total, time.perf_counter(), pipe.llm.n_decoded))

        for i, (field, terms) in enumerate(builtin_vocabulary().items()):
            fed, every = trie_rows([answer_ids(t, pipe.template, pipe.tokenizer.tokenize) for t in terms])
            events.clear()
            before = pipe.llm.n_decoded if i else 0
            t0 = time.perf_counter()
            ranked = model.rank(song, field_question(field), list(terms),
                                request=model.request(max_tokens=1, temperature=0.0, progress=progress))
            t1 = time.perf_counter()
            if i == 0:  # this call read the song: the prefill's rate from its reports, ranking after them
                pre = [e for e in events if e[0] == "prefill"]
                head = [e for e in pre if e[2] == max(e[2] for e in pre)]
                rate = (head[-1][1] - head[0][1]) / (head[-1][3] - head[0][3])
                prefill_rows, prefill_s = head[-1][2], head[-1][2] / rate
                rows.append(("prefill: the song (and the prompt before it)", prefill_rows, prefill_s))
                t0, before = pre[-1][3], pre[-1][4]
            rows.append((f"rank {field}: {len(terms)} terms, {fed} trie rows ({every} if leaves were fed), "
                         f"and the question", pipe.llm.n_decoded - before, t1 - t0))
            print(f"{field}: {ranked[0][0]} {ranked[0][1]:.3f}", file=sys.stderr)

    rank_s = sum(s for name, _, s in rows if name.startswith("rank"))
    rank_rows = sum(r for name, r, _ in rows if name.startswith("rank"))
    print(f"\n`{' '.join(sys.argv)}`: a {args.seconds:g} s song, {model_dir.name}\n")
    print("| stage | rows | s | rows/s |")
    print("|---|---|---|---|")
    for name, n, s in rows:
        print(f"| {name} | {'' if n is None else n} | {s:.2f} | {'' if not n else f'{n / s:.1f}'} |")
    print(f"| all five rankings | {rank_rows} | {rank_s:.1f} | {rank_rows / rank_s:.1f} |")
    print(f"\nranking the built-in vocabulary costs {rank_s / prefill_s:.2f}x the song's prefill")
    if args.json:
        Path(args.json).write_text(json.dumps({"stages": [{"stage": a, "rows": b, "seconds": c} for a, b, c in rows],
                                               "rank_vs_prefill": rank_s / prefill_s}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
