#!/usr/bin/env python3
"""What ranking a vocabulary costs beside reading the song: one generated song, the built-in
vocabulary's fields (genre, mood, instruments, tempo feel, vocals) ranked one at a time
(`Model.rank`) and all together (what `Model.tags` and `batch --tags --vocabulary` do), in one
process, the song read once. Prints, per stage, the rows the LLM evaluated, their seconds and
rows per second, and the ranking's cost beside the song's prefill.

    python scripts/bench_rank.py --model DIR --seconds 240 --threads 2   # a converted full-size model
    python scripts/bench_rank.py --preset tiny --seconds 20               # a smoke test

Each term is one path of a token trie after its question: the rows are the trie's nodes that
other tokens follow (a term's closing token is scored from the logits before it, never fed).
Random weights rank nothing meaningful, but they cost what real ones do.
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
    from mufun_local.encoder.embedder import AudioInput
    from mufun_local.llm.llama import trie_cells
    from mufun_local.llm.prompt import answer_ids, build, tokenize
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
        vocab = builtin_vocabulary()
        prms = [build(field_question(f), 1, pipe.template) for f in vocab]
        ids = [[answer_ids(t, pipe.template, pipe.tokenizer.tokenize) for t in terms] for terms in vocab.values()]
        tails = [list(tokenize(p, pipe.tokenizer.tokenize)[-1]) for p in prms]

        def progress(stage: str, done: int, total: int) -> None:
            events.append((stage, done, total, time.perf_counter(), pipe.llm.n_decoded))

        def timed(call) -> tuple[int, float]:
            before, t0 = pipe.llm.n_decoded, time.perf_counter()
            call()
            return pipe.llm.n_decoded - before, time.perf_counter() - t0

        request = model.request(max_tokens=1, temperature=0.0, progress=progress)
        t0 = time.perf_counter()
        model.rank(song, field_question("genre"), list(vocab["genre"]), request=request)  # reads the song
        pre = [e for e in events if e[0] == "prefill"]
        rate = (pre[-1][1] - pre[0][1]) / (pre[-1][3] - pre[0][3])  # from the prefill's own reports
        prefill_rows, prefill_s = pre[-1][2], pre[-1][2] / rate
        rows.append(("decode, encoder, connector, LLM load (once)", None, pre[0][3] - t0 - pre[0][1] / rate))
        rows.append(("prefill: the prompt up to the end of the song", prefill_rows, prefill_s))
        for (field, terms), tail, term_ids in zip(vocab.items(), tails, ids):
            n, s = timed(lambda: model.rank(song, field_question(field), list(terms), request=request))
            fed = trie_cells([tail + t for t in term_ids])
            rows.append((f"rank {field} alone: {len(terms)} terms ({fed} trie rows)", n, s))
        n, s = timed(lambda: pipe.score_many(prms, [AudioInput(str(song))], ids, request))
        fed = trie_cells([tail + t for tail, term_ids in zip(tails, ids) for t in term_ids])
        rows.append((f"rank all five together ({fed} trie rows), as tags does", n, s))

    alone = [r for r in rows if " alone" in r[0]]
    together = rows[-1]
    print(f"\n`{' '.join(sys.argv)}`: a {args.seconds:g} s song, {model_dir.name}\n")
    print("| stage | rows | s | rows/s |")
    print("|---|---|---|---|")
    for name, n, s in rows:
        print(f"| {name} | {'' if n is None else n} | {s:.2f} | {'' if not n else f'{n / s:.1f}'} |")
    print(f"\nthe five fields one at a time: {sum(r[2] for r in alone):.1f} s; together {together[2]:.1f} s "
          f"= {together[2] / prefill_s:.2f}x the song's prefill")
    if args.json:
        Path(args.json).write_text(json.dumps({"stages": [{"stage": a, "rows": b, "seconds": c} for a, b, c in rows],
                                               "together_vs_prefill": together[2] / prefill_s}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
