"""The `mufun-local` command line: ask · chat · serve · batch · eval · embed · convert · pull · info · models · demo."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import __version__
from .flags import (FiniteRange, bar_stage, encoder_options, flash_attn_option, model_option,  # noqa: F401
                    quant_option, sampling_options, segs_list, setup_logging, stderr, value_range, verbosity)
from ..errors import MufunError
from ..format.encoder_dir import CT2_STORED
from ..format.templates import TEMPLATES
from ..format.weights import KEEP_TYPES
from ..logs import log
from ..progress import StatusLine


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mufun-local")
def cli():
    """Ask the MuFun music-understanding model about your audio, offline.

    \b
    Quick start (no download, random weights):  mufun-local demo
    Ask about a song:                           mufun-local ask song.flac "What genre is this?"
    """


# ------------------------------------------------------------------ ask

@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="AUDIO... QUESTION")
@model_option
@click.option("--segs", multiple=True, metavar="START:END", help="Seconds of each audio to use (repeat per file).")
@sampling_options
@click.option("--seed", type=int, default=None, help="Sampling seed (default: random).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--n-gpu-layers", type=int, default=-1, help="LLM layers on the GPU (default: all, when built with a GPU backend).")
@click.option("--ctx", type=click.IntRange(min=64), default=None, help="Context size (default: sized to prompt + audio + answer).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with text, tokens and timings.")
@click.option("--schema", type=click.Path(dir_okay=False), default=None,
              help="Answer as JSON valid for this JSON Schema file (llama.cpp's grammar sampler); an answer "
                   "that --max-tokens cuts off is an error.")
@click.option("--grammar", type=click.Path(dir_okay=False), default=None,
              help="Answer in the language of this GBNF grammar file (root rule: root).")
@click.option("--vocabulary", default=None, metavar="FILE|builtin",
              help="Rank this vocabulary's terms as answers, with their probabilities, instead of generating "
                   "one: a file of one term a line, or a JSON/YAML map with one field (`builtin`: its genres).")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="With --vocabulary: terms shown.")
@click.option("--no-cache", is_flag=True, help="Do not use or fill the audio-embedding and prefix caches.")
@flash_attn_option
@encoder_options
@verbosity
def ask(inputs, model, segs, temperature, top_p, top_k, repeat_penalty, seed, max_tokens,
        n_gpu_layers, ctx, as_json, schema, grammar, vocabulary, top, no_cache, flash_attn, encoder, quiet, verbose):
    """Answer QUESTION about one or more AUDIO files.

    \b
    mufun-local ask song.flac "What genre is this?"
    mufun-local ask a.mp3 b.mp3 "<audio> is song 1. <audio> is song 2. Which is faster?"
    mufun-local ask --segs 60:90 song.flac "Describe the instruments." --temperature 0
    mufun-local ask song.flac "Tag this song." --schema tags.schema.json --json
    mufun-local ask song.flac "What is the genre of this music?" --vocabulary genres.txt
    """
    from ..llm import grammar as constrain
    from ..model import Model

    setup_logging(quiet, verbose)
    if len(inputs) < 2:
        raise click.UsageError("give at least one AUDIO file and a QUESTION")
    if schema and grammar:
        raise MufunError("give --schema or --grammar, not both")
    *files, question = inputs
    seg_list = segs_list(segs, len(files))
    if vocabulary:
        if schema or grammar:
            raise MufunError("--vocabulary ranks terms; it takes no --schema or --grammar")
        return _rank(files, question, seg_list, vocabulary, top, as_json, quiet,
                     dict(caches=None if no_cache else "disk", n_gpu_layers=n_gpu_layers, n_ctx=ctx, verbose=verbose,
                          flash_attn=flash_attn, **encoder), model)
    schema_doc = constrain.load_schema(schema) if schema else None
    gbnf = constrain.read_file(grammar, "grammar") if grammar else None
    status = StatusLine(enabled=None if not quiet else False)
    with Model(model, caches=None if no_cache else "disk", n_gpu_layers=n_gpu_layers, n_ctx=ctx, verbose=verbose,
               flash_attn=flash_attn, **encoder) as m:
        req = m.request(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                        repeat_penalty=repeat_penalty, schema=schema_doc, grammar=gbnf, progress=status)
        try:
            answer = m.ask(files, question, segs=seg_list, request=req)
            for piece in answer:
                if not as_json:
                    click.echo(piece, nl=False)
                    sys.stdout.flush()
            res = answer.result()
        finally:
            status.clear()
    if schema:
        answer.json()  # a cut-off answer, or one breaking what the grammar cannot express, is an error
    if as_json:
        from ..llm.prompt import parsed_answer
        parsed = parsed_answer(res.text)
        click.echo(json.dumps({
            "text": res.text, **({"parsed": parsed} if parsed is not None else {}),
            "tokens": res.tokens, "prompt_tokens": res.prompt_tokens,
            "audio_tokens": res.audio_tokens, "stopped": res.stopped,
            "timings": {k: round(res.timings.get(k, 0.0), 4)
                        for k in ("decode", "features", "encoder", "connector", "prefill", "generate")
                        + tuple(k for k in ("load", "prefix_load", "prefix_save") if k in res.timings)},
            "peak_rss_mb": {k: round(v) for k, v in res.peaks.items()},
        }, ensure_ascii=False))
    else:
        click.echo()
    if verbose:
        stderr("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in res.timings.items()))


def _rank(files, question, seg_list, vocabulary, top, as_json, quiet, load: dict, model) -> None:
    """ask --vocabulary: the terms ranked as answers to the question."""
    from ..model import Model
    from ..tags import load_vocabulary
    fields = load_vocabulary(vocabulary)
    if len(fields) != 1 and vocabulary != "builtin":
        raise MufunError(f"{vocabulary}: ask ranks one list of terms; this map has {len(fields)} fields "
                         f"({', '.join(fields)}): `batch --tags --vocabulary` answers each")
    terms = list(fields.get("genre") or next(iter(fields.values())))
    status = StatusLine(enabled=None if not quiet else False)
    with Model(model, **load) as m:
        try:
            ranked = m.rank(files, question, terms, segs=seg_list, request=m.request(max_tokens=1, progress=status))
        finally:
            status.clear()
    if as_json:
        click.echo(json.dumps({"ranking": [[t, round(p, 6)] for t, p in ranked[:top]]}, ensure_ascii=False))
    else:
        width = max(len(t) for t, _ in ranked[:top])
        for t, p in ranked[:top]:
            click.echo(f"{t:<{width}}  {p:.4f}")


# ------------------------------------------------------------------ chat

CHAT_HELP = """commands: /audio FILE [START:END]  add audio to your next question
          /reset  start over   /save FILE  write the conversation as JSON   /quit  leave"""


@cli.command()
@click.argument("audio_files", nargs=-1, metavar="[AUDIO...]")
@model_option
@sampling_options
@click.option("--seed", type=int, default=None)
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True, help="Per answer.")
@click.option("--n-gpu-layers", type=int, default=-1)
@click.option("--ctx", type=click.IntRange(min=64), default=None, help="Context size for the whole conversation (default 8192).")
@click.option("--no-cache", is_flag=True, help="Do not use or fill the audio-embedding cache.")
@flash_attn_option
@encoder_options
@verbosity
def chat(audio_files, model, temperature, top_p, top_k, repeat_penalty, seed, max_tokens, n_gpu_layers, ctx,
         no_cache, flash_attn, encoder, quiet, verbose):
    """Talk about one or more audio files, turn after turn.

    The audio is encoded once and earlier turns are never evaluated again.

    \b
    mufun-local chat song.flac
    > What genre is this?
    > /audio other.mp3
    > How does this one compare?
    """
    from ..chat import CHAT_PROMPT
    from ..encoder.embedder import AudioInput
    from ..model import Model

    setup_logging(quiet, verbose)
    status = StatusLine(enabled=None if not quiet else False)
    m = Model(model, caches=None if no_cache else "disk", n_gpu_layers=n_gpu_layers, n_ctx=ctx, verbose=verbose,
              flash_attn=flash_attn, **encoder)
    session = m.chat(ctx, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                     repeat_penalty=repeat_penalty, max_tokens=max_tokens, progress=status)
    for f in audio_files:
        session.add_audio(AudioInput(f))
    tty = sys.stdin.isatty()
    failed = 0
    if tty:
        import readline  # noqa: F401  (line editing and history for input())
        if not quiet:
            stderr(CHAT_HELP)
    try:
        while True:
            try:
                line = input(CHAT_PROMPT) if tty else sys.stdin.readline()
            except EOFError:
                break
            if not tty and line == "":
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not _chat_command(session, line):
                    break
                continue
            stream = session.send(line)
            try:
                for piece in stream:
                    click.echo(piece, nl=False)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                status.clear()
                stream.close()
                stderr("\n[stopped]")
            except MufunError as exc:
                status.clear()
                failed += 1
                stderr(f"error: {exc}")
            click.echo()
    finally:
        m.close()
    if failed and not tty:  # a script reading our output must see that a turn failed
        raise MufunError(f"{failed} question(s) could not be answered")


def _chat_command(session, line: str) -> bool:
    """Run a /command; False ends the session."""
    from ..audio.decode import parse_segs
    from ..encoder.embedder import AudioInput
    from ..files import write_text_atomic

    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    try:
        if cmd in ("/quit", "/exit"):
            return False
        if cmd == "/reset":
            session.reset()
            stderr("[conversation reset]")
        elif cmd == "/audio" and arg:
            path, _, segs = arg.partition(" ")
            session.add_audio(AudioInput(path, parse_segs(segs) if segs.strip() else None))
            stderr(f"[{path} goes with your next question]")
        elif cmd == "/save" and arg:
            write_text_atomic(Path(arg), session.to_json() + "\n")
            stderr(f"[saved to {arg}]")
        else:
            stderr(CHAT_HELP)
    except (MufunError, OSError) as exc:
        stderr(f"error: {exc}")
    return True


# ------------------------------------------------------------------ serve

@cli.command()
@model_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--api-key", default=None, envvar="MUFUN_API_KEY", help="Require 'Authorization: Bearer KEY' (not on /health).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests whose Host header is NAME (e.g. behind a reverse proxy); "
                   "by default only the bound address and loopback names are answered (DNS rebinding).")
@click.option("--ctx", type=click.IntRange(min=64), default=None, help="Context per request (default: min(model, 8192)).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True, help="Default max_tokens per request.")
@click.option("--max-queue", type=click.IntRange(min=1), default=32, show_default=True, help="Waiting requests before 503.")
@click.option("--request-timeout", type=FiniteRange(min=1), default=600.0, show_default=True,
              help="Seconds a request may take from its arrival (queueing included) before it is stopped with a 504.")
@click.option("--max-body-mb", type=float, default=64.0, show_default=True)
@click.option("--n-gpu-layers", type=int, default=-1)
@click.option("--no-cache", is_flag=True, help="Do not use or fill the audio-embedding and prefix caches.")
@flash_attn_option
@encoder_options
@verbosity
def serve(model, host, port, api_key, allow_hosts, ctx, max_tokens, max_queue, request_timeout, max_body_mb, n_gpu_layers, no_cache,
          flash_attn, encoder, quiet, verbose):
    """Serve an OpenAI-compatible API (and a web page at /).

    \b
    mufun-local serve --port 8080
    curl localhost:8080/v1/chat/completions -d '{"messages": [{"role": "user", "content": [
      {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "mp3"}},
      {"type": "text", "text": "What genre is this?"}]}]}'
    """
    import uvicorn

    from ..model import Model
    from ..server.http import LOOPBACK_NAMES, allowed_hosts, create_app

    setup_logging(quiet, verbose)
    if api_key is not None and not api_key.strip():
        raise MufunError("--api-key is empty; give a real key, or leave it out to serve without one")
    if host.strip("[]") not in LOOPBACK_NAMES and api_key is None:
        stderr(f"warning: serving on {host} without --api-key: anyone who can reach this port can use it")
    from ..store.models import resolve
    md = resolve(model, quiet=quiet)
    # a server answers request after request: reloading the encoder each time would cost seconds
    # encoder_batch=1: a request stopped by its client or deadline stops after the current
    # 30 s window (one window per call costs OpenVINO ~4 % per window, ONNX Runtime nothing)
    m = Model(md, caches=None if no_cache else "disk", n_gpu_layers=n_gpu_layers, verbose=verbose,
              keep_audio_models=True, flash_attn=flash_attn, encoder_batch=1,
              n_ctx=ctx or min(int(md.manifest["dims"]["max_positions"]), 8192), **encoder)
    app = create_app(m, api_key=api_key, max_queue=max_queue, max_body_mb=max_body_mb,
                     hosts=allowed_hosts(host, allow_hosts), request_timeout=request_timeout, max_tokens=max_tokens)
    if not quiet:
        stderr(f"serving {md.path} on http://{host}:{port} (OpenAI API at /v1, web page at /)")
    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning")


# ------------------------------------------------------------------ batch

@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@model_option
@click.option("--question", "questions", multiple=True, help="Ask this about every file (repeatable).")
@click.option("--tags", is_flag=True,
              help="Ask one question per file for tags as JSON (genre, subgenre, mood, instruments, tempo feel, "
                   "vocals, language, description; docs/cli.md, Tag your library), constrained to that schema.")
@click.option("--vocabulary", default=None, metavar="FILE|builtin",
              help="With --tags: rank these terms for their fields instead of free text, each with its "
                   "probability (genre, genre_score, genre_top, ...): a file of one genre a line, a JSON/YAML map "
                   "of field -> terms, or `builtin` (Discogs' 15 genres, MTG-Jamendo's moods and instruments, the "
                   "schema's tempo feels and vocals). "
                   "The fields it lacks are asked as JSON.")
@click.option("--excerpt", type=FiniteRange(min=1), default=None, metavar="SECONDS",
              help="Read only the middle SECONDS of each file (its declared length; shorter files whole): "
                   "much faster on long songs; what it costs in accuracy is not measured yet (docs/performance.md).")
@click.option("--schema", type=click.Path(dir_okay=False), default=None,
              help="Constrain every answer to this JSON Schema (as ask --schema).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="JSONL results (appended; resumable).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), default="jsonl", show_default=True,
              help="Also write the results as a table beside --out (OUT.csv / OUT.parquet), at the end and on "
                   "Ctrl-C; the JSONL stays the resumable journal.")
@click.option("--temperature", type=value_range("temperature"), default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=None,
              help="Answer length limit (default 128; 512 with --tags or --schema, which a finished answer "
                   "needs within).")
@click.option("--ctx", type=click.IntRange(min=64), default=None)
@click.option("--parallel", type=click.IntRange(min=1, max=64), default=8, show_default=True,
              help="Answer up to N questions about a file side by side: the weights are read once per token "
                   "for all of them (5 questions cost little more than 1); each adds a KV cache of the "
                   "song's length (~0.3 GB for a 3-minute song at full size). The answers equal one-at-a-time ones.")
@click.option("--ray", "ray_address", default=None, is_flag=False, flag_value="auto", metavar="[ADDRESS]",
              help="Run as a Ray Data pipeline (needs the `ray` extra): bare or `auto` joins the running cluster "
                   "(RAY_ADDRESS / `ray start`), `local` starts one on this machine, or give host:port / ray://host:10001.")
@click.option("--ray-actors", type=int, default=1, show_default=True,
              help="With --ray: answering actors, each holding the encoder and the LLM (one GPU each when there are GPUs).")
@encoder_options
@verbosity
def batch(inputs, model, questions, tags, vocabulary, excerpt, schema, out, fmt, temperature, seed, max_tokens, ctx, parallel,
          ray_address, ray_actors, encoder, quiet, verbose):
    """Ask the same questions about many files; one JSON line per (file, question).

    INPUTS are files, folders (searched recursively), globs, or .txt/.csv lists of paths.
    Re-running with the same --out skips what is already there.

    \b
    mufun-local batch ~/Music --question "What genre is this?" --question "Describe the mood." --out tags.jsonl
    mufun-local batch ~/Music --tags --vocabulary genres.txt --out tags.jsonl --format csv
    mufun-local batch songs.csv --question "What genre is this?" --out tags.jsonl --ray        # on a Ray cluster
    """
    from ..batch.local import Reading, expand_inputs, run_batch
    from ..model import Caches, Model
    from ..progress import bar as progress_bar
    from ..tags import TAGS_QUESTION, TAGS_SCHEMA, load_vocabulary

    setup_logging(quiet, verbose)
    if vocabulary and not tags:
        raise MufunError("--vocabulary ranks the fields of --tags: give --tags too")
    reading = Reading(load_vocabulary(vocabulary) if vocabulary else None, excerpt)
    files = expand_inputs(inputs)
    if not files:
        raise MufunError("no audio files found in the given inputs")
    from ..llm import grammar as constrain
    from ..batch import export
    if tags and schema:
        raise MufunError("give --tags or --schema, not both")
    questions = list(questions) + ([TAGS_QUESTION] if tags else [])
    if not questions:
        raise click.UsageError("give --question (repeatable) or --tags")
    if fmt != "jsonl":
        export.table_path(Path(out), fmt)  # a clash with --out is said before any work
    schema_doc = TAGS_SCHEMA if tags else (constrain.load_schema(schema) if schema else None)
    max_tokens = max_tokens or (512 if schema_doc else 128)
    if ray_actors < 1:
        raise MufunError("--ray-actors must be at least 1")
    if ray_address:
        from ..batch.on_ray import import_ray, run_batch_ray
        import_ray()  # says how to install it before anything starts
    # a file's embeddings stay in memory between its question groups (Caches.for_batch)
    m = Model(model, caches=Caches.for_batch(), n_ctx=ctx, keep_audio_models=True, parallel=parallel,
              verbose=verbose, **encoder)
    bar = progress_bar("batch", len(files) * len(questions), "answer", quiet, dynamic_ncols=True)
    # batch samples from the flags alone (top_p 1, top_k 0), not the model's generation config
    req = m.request(max_tokens=max_tokens, temperature=temperature, top_p=1.0, top_k=0, seed=seed, schema=schema_doc,
                    progress=None if ray_address else bar_stage(bar))
    summary, interrupted = None, False
    try:
        if ray_address:
            summary = run_batch_ray(ray_address, m, req, files, list(questions), Path(out), progress=bar.update,
                                    actors=ray_actors, reading=reading)
        else:
            summary = run_batch(m, req, files, list(questions), Path(out), progress=bar.update, reading=reading)
    except KeyboardInterrupt:
        bar.close()
        stderr(f"interrupted; everything answered so far is in {out} (run again to resume)")
        interrupted = True
        raise
    finally:
        bar.close()
        m.close()
        if summary is not None or interrupted:  # a run that got going (not one refused at the start)
            table = export.write_table(Path(out), fmt)
            if table and not quiet:
                stderr(f"table: {table}")
    if summary and not quiet:
        stderr(f"done {summary.done}, skipped {summary.skipped} (already in {out}), failed {summary.failed}")
    if summary and summary.failed and not summary.done:
        raise MufunError(f"every answer failed; see the error field in {out}")


# ------------------------------------------------------------------ eval

@cli.command("eval")
@click.argument("data", metavar="DATA")
@model_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="JSONL results (appended; resumable). With --compare, the second model's go to OUT.compare.jsonl.")
@click.option("--compare", "compare_model", default=None, metavar="M2",
              help="Also run model M2 (e.g. a q8_0 conversion) on the same items; print both tables and the "
                   "items whose letters differ.")
@click.option("--task", "tasks", multiple=True, help="Only this task (repeatable; default: every task in DATA).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="The first N items of each task.")
@click.option("--ctx", type=click.IntRange(min=64), default=None)
@encoder_options
@verbosity
def eval_cmd(data, model, out, compare_model, tasks, limit, ctx, encoder, quiet, verbose):
    """Accuracy on a MuCUE-format multiple-choice set, with the paper's prompt and settings.

    DATA is a .json/.jsonl/.parquet item file or a folder of them (one per task): items with
    question, choices_text, correct_choice, audio (a path relative to the file) and time_seg.
    Greedy, 64 new tokens; the letter is read from each answer by rules (docs/cli.md, eval).

    \b
    mufun-local eval ./mucue --out f16.jsonl
    mufun-local eval ./mucue --out q4.jsonl --model ./mufun-base-q4 --compare ./mufun-base --limit 50
    """
    from ..batch import evaluate
    from ..progress import bar as progress_bar
    from ..batch.local import read_records, settings_key
    from ..model import Caches, Model

    setup_logging(quiet, verbose)
    out = Path(out)
    items = evaluate.load_items(data, tasks, limit, audio_dir=out.parent / f".{out.name}.audio")
    runs = []
    for spec, journal in ((model, out), *(((compare_model, out.with_suffix(".compare.jsonl")),)
                                          if compare_model else ())):
        # the embeddings on disk: a second model with the same encoder (--compare) reuses them
        m = Model(spec, caches=Caches.on_disk(prefixes=False), n_ctx=ctx, keep_audio_models=True, verbose=verbose,
                  **encoder)
        md = m.dir
        req = evaluate.request(m)
        settings = settings_key(m, req)
        bar = progress_bar(md.path.name, len(items), "item", quiet, dynamic_ncols=True)
        try:
            done, skipped, failed = evaluate.run_eval(m, req, items, journal, m.id, settings, progress=bar.update)
        finally:
            bar.close()
            m.close()
        if not quiet:
            stderr(f"{md.path.name}: answered {done}, skipped {skipped} (already in {journal}), failed {failed}")
        keys = {it.key for it in items}
        recs = {k: r for k, r in evaluate.latest(read_records(journal), settings).items() if k in keys}
        runs.append((md.path.name, recs))
    click.echo(evaluate.format_tables(runs))
    if compare_model:
        diff = evaluate.differing(runs[0][1], runs[1][1])
        click.echo(f"\n{len(diff)} item(s) answered differently ({runs[0][0]} vs {runs[1][0]}; correct):")
        for key, a, b, correct in diff[:50]:
            click.echo(f"  {key}: {a or '-'} vs {b or '-'} ({correct})")
        if len(diff) > 50:
            click.echo(f"  ... and {len(diff) - 50} more (both journals hold every answer)")
    for name, recs in runs:
        if recs and all(r.get("error") is not None for r in recs.values()):
            raise MufunError(f"{name}: every item failed; see the error field in the journal")


# ------------------------------------------------------------------ embed

@cli.command()
@click.argument("audio_file", metavar="AUDIO")
@model_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output .npy (or .npz with --layers).")
@click.option("--segs", default=None, metavar="START:END", help="Seconds of the audio to use.")
@click.option("--layers", is_flag=True, help="Also write hidden states hs0/hs7/hs15/hs32 (an .npz).")
@encoder_options
@verbosity
def embed(audio_file, model, out, segs, layers, encoder, quiet, verbose):
    """Write the audio embeddings the LLM would receive ([tokens, hidden] float32).

    \b
    mufun-local embed song.flac --out song.npy
    mufun-local embed song.flac --layers --out song.npz
    """
    import numpy as np

    from ..audio.decode import parse_segs
    from ..model import Model

    setup_logging(quiet, verbose)
    timings: dict[str, float] = {}
    with Model(model, caches=None, **encoder) as m:
        res = m.embed(audio_file, segs=parse_segs(segs) if segs else None, layers=layers, timings=timings)
    from ..files import write_atomic

    def write(fh):
        if layers:
            hs = res.hidden_states
            np.savez(fh, embeddings=res.embeddings, hs0=hs.hs0, hs7=hs.hs7, hs15=hs.hs15, hs32=hs.hs32)
        else:
            np.save(fh, res.embeddings)
    write_atomic(Path(out), write)
    if not quiet:
        stderr(f"{audio_file}: {res.seconds:.1f} s, {res.windows} window(s) -> "
                f"{list(res.embeddings.shape)} embeddings in {out} "
                f"({sum(timings.values()):.2f} s)")


# ------------------------------------------------------------------ convert / info / models

@cli.command()
@click.argument("src", metavar="SRC")
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False))
@quant_option
@click.option("--encoder-quant", type=click.Choice(list(CT2_STORED)), default="float16",
              show_default=True, help="Stored encoder weight type (any compute type can be chosen at load).")
@click.option("--encoder-backends", default="auto", show_default=True, metavar="LIST",
              help="Encoder artifacts to write, comma-separated: ctranslate2, onnx (one graph for ONNX Runtime "
                   "and OpenVINO, 16-bit weights: about 1.3 GB more at full size). auto: both where ONNX Runtime "
                   "is installed (a plain install has it wherever it has wheels).")
@click.option("--keep-f16", is_flag=True, help="Keep the F16 GGUF made on the way to a quantized one.")
@click.option("--onnx-int8", is_flag=True,
              help="Also write ONNX Runtime's int8 encoder graph (for --compute-type int8: faster where the CPU "
                   "lacks bf16 units, less accurate; its quantizer doubles conversion memory at full size).")
@click.option("--output-type", type=click.Choice(list(KEEP_TYPES)), default=None,
              help="Keep the output matrix (lm_head) at this type in a quantized GGUF (docs/accuracy.md has what "
                   "each mix costs).")
@click.option("--embedding-type", type=click.Choice(list(KEEP_TYPES)), default=None,
              help="Keep the token embeddings at this type in a quantized GGUF.")
@click.option("--imatrix/--no-imatrix", "use_imatrix", default=True, show_default=True,
              help="Quantize the weight types that take one (q4_k_m) with an importance matrix computed from "
                   "MuFun prompts: measured more accurate at the same size and speed (docs/accuracy.md).")
@click.option("--calibration", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="AUDIO",
              help="Audio for the importance matrix (repeatable; the first 20 s of each). Default: 4 generated "
                   "songs.")
@click.option("--template", type=click.Choice(["auto", *TEMPLATES]), default="auto",
              show_default=True,
              help="The release's conversation template (chat and serve follow it): auto reads the checkpoint's "
                   "conv_version, else the release name (MuFun-Instruct: qwen2_instruct), else qwen2_base.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="Quantizer threads (default: all cores).")
@verbosity
def convert(src, out, quant, encoder_quant, encoder_backends, keep_f16, onnx_int8, output_type, embedding_type,
            use_imatrix, calibration, template, force, threads, quiet, verbose):
    """Convert an original MuFun checkpoint (directory or hub id) into a model directory.

    \b
    mufun-local convert ./MuFun-Base ./mufun-base                      # 4-bit (q4_k_m)
    mufun-local convert Yi3852/MuFun-Base ./mufun-base-q8 --quant q8_0
    mufun-local convert ./MuFun-Base ./mufun-base-f16 --quant f16      # as accurate as bf16
    """
    from ..convert.run import convert as run_convert, default_encoder_backends
    from ..store.hub import fetch_checkpoint
    from ..store.imatrix import calibrator

    setup_logging(quiet, verbose)
    backends = (default_encoder_backends() if encoder_backends == "auto"
                else tuple(b.strip() for b in encoder_backends.split(",") if b.strip()))
    done = run_convert(src, out, quant=quant, encoder_quant=encoder_quant, encoder_backends=backends,
                       force=force, keep_f16=keep_f16, template=template, onnx_int8=onnx_int8,
                       threads=threads, quiet=quiet, verbose=verbose, output_type=output_type,
                       embedding_type=embedding_type,
                       calibrate=calibrator(list(calibration) or None, threads=threads) if use_imatrix else None,
                       fetch=fetch_checkpoint)
    _measure_encoders(Path(done) / "encoder", quiet)


def _measure_encoders(encoder_dir: Path, quiet: bool) -> None:
    """Time the encoder engines now, where a wait is expected, instead of in the first `ask`
    (about a minute at the real size; kept per machine, so later conversions reuse it)."""
    from ..encoder.choice import choose
    from ..paths import encoder_choice_file
    try:
        c = choose(encoder_dir, "auto", "auto", None, 0, encoder_choice_file())
    except MufunError as exc:
        log.warning("could not time the encoder engines now (the first ask will): %s", exc)
        return
    if not quiet:
        stderr(f"encoder engine for this machine: {c.backend} {c.compute_type} ({c.reason})")


@cli.command()
@click.argument("model_id", required=False, metavar="[ID]")
@quant_option
@verbosity
def pull(model_id, quant, quiet, verbose):
    """Download a MuFun release from the Hugging Face hub and convert it, once.

    Says first what it costs (download size, conversion time and size); an interrupted
    download resumes where it stopped. Afterwards `ask --model ID` finds it in the cache.

    \b
    mufun-local pull                              # Yi3852/MuFun-Base
    mufun-local pull Yi3852/MuFun-Instruct --quant q8_0
    """
    from ..store.models import pull as pull_model
    from ..format import weights

    setup_logging(quiet, verbose)
    md, had = pull_model(model_id, quant, quiet=quiet)
    if not had:
        _measure_encoders(md.path / "encoder", quiet)
    size = sum(p.stat().st_size for p in md.path.rglob("*") if p.is_file())
    model_flag = "" if quant == weights.DEFAULT else f" (with --quant {quant}: --model {md.path})"
    click.echo(f"{'already converted' if had else 'ready'}: {md.path} ({size / 1e9:.1f} GB){model_flag}")


@cli.command()
@click.argument("model", required=False, metavar="[MODEL]")
@click.option("--verify", is_flag=True, help="Check every file's sha256 against the manifest.")
@click.option("--system", is_flag=True, help="Show what llama.cpp and the encoder engines were built with, and the CPU.")
def info(model, verify, system):
    """Describe a converted model (and with --verify, check its files).

    \b
    mufun-local info ./mufun-base --verify
    mufun-local info --system
    """
    from ..store.models import resolve
    from ..format.model_dir import describe

    setup_logging(False, False)
    if system:
        from .system import system_info
        click.echo(system_info())
        if not model:
            return
    md = resolve(model)
    click.echo(describe(md))
    if verify:
        bad = md.verify()
        if bad:
            raise MufunError(f"{len(bad)} file(s) differ from the manifest: {', '.join(bad)}")
        click.echo(f"verified   all {len(md.manifest['files'])} files match their sha256")


@cli.group(invoke_without_command=True)
@click.pass_context
def models(ctx):
    """List the converted models in the cache ($MUFUN_HOME)."""
    if ctx.invoked_subcommand is None:
        from ..paths import models_dir
        from ..store.models import list_cached
        rows = list_cached()
        if not rows:
            click.echo(f"no cached models in {models_dir()}")
        for name, size in rows:
            click.echo(f"{name:<48} {size / 1e9:8.2f} GB")


@models.command("rm")
@click.argument("name")
def models_rm(name):
    """Delete a cached model."""
    from ..store.models import remove_cached
    size = remove_cached(name)
    click.echo(f"removed {name} ({size / 1e9:.2f} GB)")


# ------------------------------------------------------------------ demo

@cli.command()
@click.option("--question", default="What genre is this music?", show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=24, show_default=True)
def demo(question, max_tokens):
    """Prove the install works end to end, with no download.

    Builds (once, cached) a tiny synthetic MuFun checkpoint with random weights, converts it,
    makes a 3-second test chord, and runs the same path as `ask`. The weights are random,
    so the answer is noise: the point is that every stage runs.
    """
    setup_logging(False, False)
    from .demo import run_demo
    run_demo(question, max_tokens, echo=click.echo)


def main(argv=None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="mufun-local", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        stderr("aborted")
        return 130
    except KeyboardInterrupt:
        stderr("interrupted")
        return 130
    except MufunError as exc:
        stderr(f"error: {exc}")
        return 1
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a journal, an export or an output file that cannot be written
        from ..errors import first_line
        where = f"{exc.filename}: " if exc.filename else ""
        stderr(f"error: {where}{first_line(exc.strerror or exc)}")
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
