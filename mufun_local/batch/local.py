"""`mufun-local batch`: many files x many questions -> one JSON line each, resumable.

Lines are written and flushed as each answer finishes, so a crash loses nothing; running
again with the same --out skips every (path, question) already there. Decoding and log-mels
of the next files run in a small thread pool while the LLM answers about the current one; several
questions about one file encode it once (an in-memory embedding cache).
"""
from __future__ import annotations

import csv
import glob
import json
import os
import time
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import MufunError
from ..encoder.embedder import AudioInput
from ..options import Request
from ..tags import TAGS_QUESTION
from ..llm.grammar import finished_json
from ..llm.prompt import parsed_answer

AUDIO_EXTENSIONS = {".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".wma",
                    ".webm", ".mp4"}


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files, folders (recursive), globs, and .txt/.csv lists of paths -> sorted unique paths."""
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
        elif p.suffix.lower() in (".txt", ".csv", ".lst") and p.is_file():
            out += _read_list(p)
        elif any(ch in item for ch in "*?["):
            out += sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
        else:
            out.append(item)  # a missing file is reported as an error line, not dropped
    seen, unique = set(), []
    for f in out:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique


def _read_list(path: Path) -> list[str]:
    base = path.parent
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if rows and rows[0] and rows[0][0].strip().lower() in ("path", "file", "filename"):
            rows = rows[1:]
        names = [r[0].strip() for r in rows if r and r[0].strip()]
    else:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
    return [n if os.path.isabs(n) else str(base / n) for n in names]


def read_done(out: Path, settings: str = "") -> dict[tuple[str, str], list[int]]:
    """(path, question) -> the file's stat, for the pairs answered with `settings`."""
    return {(rec["path"], rec["question"]): rec.get("stat") for rec in resume_records(out)
            if rec.get("error") is None and rec.get("settings") == settings}


def resume_records(out: Path) -> list[dict]:
    """The records of a journal about to be appended to. A last line without its newline
    is kept when it is a whole record (the newline is added) and cut when it is the start of
    one a crash left half-written. A file that is not a journal is refused, never touched."""
    if not out.exists():
        return []
    data = out.read_bytes()
    first = data.split(b"\n", 1)[0]
    if data and _record(first) is None and not (b"\n" not in data and first.startswith(RECORD_START)):
        raise MufunError(f"{out}: exists and is not a batch results file (JSON lines); choose another --out")
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(out, "r+b") as fh:
            if _record(data[cut:]) is not None:
                fh.seek(len(data))
                fh.write(b"\n")
                data += b"\n"
            elif data[cut:].startswith(RECORD_START):
                fh.truncate(cut)
                data = data[:cut]
            else:
                raise MufunError(f"{out}: its last line is neither a record nor part of one; "
                                 f"not resuming into it (choose another --out)")
    return _records(data)


def read_records(out: Path) -> list[dict]:
    """Every record of a journal, in order."""
    return _records(out.read_bytes()) if out.exists() else []


def _records(data: bytes) -> list[dict]:
    """A journal's records. Lines are split on newline alone: answers may hold U+2028 and
    other characters Python's splitlines() breaks at."""
    return [r for r in map(_record, data.split(b"\n")) if r is not None]


def _record(line: bytes) -> dict | None:
    """One journal line as a record, or None when it is not one."""
    try:
        rec = json.loads(line.decode("utf-8"))
        return rec if isinstance(rec, dict) and isinstance(rec.get("path"), str) \
            and isinstance(rec.get("question"), str) else None
    except ValueError:  # also UnicodeDecodeError
        return None


@contextmanager
def journal_lock(out: Path):
    """Hold an exclusive lock on `out` itself, so two runs on one --out cannot interleave
    their lines; a second run fails at once with a clear error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            yield
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MufunError(f"{out}: another batch run is writing it") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0


def prepare(path: str, mel_filters, file: str | None = None, excerpt: float | None = None) -> dict:
    """One file's log-mel windows (the work that overlaps with the LLM), or its error.
    `file`: where to read `path` (an absolute path for Ray workers); errors name `path`;
    `excerpt`: only the middle seconds (`segs` says which)."""
    from ..encoder.embcache import file_hash
    from ..audio.decode import middle
    from ..audio.windows import load_log_mels
    from ..timing import Timer

    timings: dict[str, float] = {}
    file = file or path
    stat = file_stat(file)  # before reading: a file changed meanwhile is answered again next time
    try:
        segs = middle(file, excerpt) if excerpt else None
        mels, seconds = load_log_mels(file, segs, mel_filters, timer=Timer(timings))
        return {"mels": mels, "seconds": seconds, "timings": timings, "sha256": file_hash(file), "stat": stat,
                "segs": segs, "error": None}
    except MufunError as exc:
        return {"timings": timings, "sha256": None, "stat": stat, "error": str(exc).replace(file, path)}
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop (or re-stop, on resume) the run
        return {"timings": timings, "sha256": None, "stat": stat,
                "error": f"{path}: cannot be read ({type(exc).__name__}: {exc})"}


def file_stat(path: str) -> list[int] | None:
    """[size, mtime in ns]: what tells a resumed run that a file changed since its answer."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class Reading:
    """What a batch does with each file besides the request: the `vocabulary` its tag question
    ranks in (Model.tags), and the `excerpt` it reads (the middle seconds; None: all)."""

    vocabulary: dict | None = None
    excerpt: float | None = None


def settings_key(model, req, reading: Reading = Reading()) -> str:
    """What else changes an answer: the model's weights and every option that reaches the
    numbers (engines, compute type, context settings; the request's sampling, answer length
    and schema; the vocabulary tags are ranked in and the excerpt read)."""
    import hashlib
    from dataclasses import asdict, replace
    both = {**asdict(model.options), **asdict(replace(req, progress=None))}
    fields = {k: v for k, v in both.items() if k not in ("verbose", "quiet", "keep_audio_models",
                                                         "keep_logits", "threads", "parallel", "progress")}
    if reading.vocabulary:
        fields["vocabulary"] = {f: list(terms) for f, terms in reading.vocabulary.items()}
    if reading.excerpt:
        fields["excerpt"] = reading.excerpt
    blob = json.dumps({"llm": model.dir.llm_sha256, "audio": model.dir.audio_hash, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def answer_file(model, req: Request, path: str, questions: list[str], prepared: dict,
                file: str | None = None, settings: str = "", reading: Reading = Reading()) -> Iterator[dict]:
    """One record per question about one prepared file: the audio is encoded once and its
    prefix evaluated once, and up to `model.options.parallel` answers are generated side by side
    (their records carry the wall time of the group). With a vocabulary (`reading`), the tag
    question is Model.tags with it (its fields ranked, the rest as JSON; `parsed` holds them all). Records
    carry `path` as the user gave it; `file` is where to read it (default: `path`); `settings`
    and the file's stat are what a resumed run compares (see pending)."""
    base = {"path": path, "sha256": prepared["sha256"], "segs": prepared.get("segs"), "model": model.id,
            "settings": settings,
            "stat": prepared.get("stat")}
    if prepared["error"] is not None:
        for q in questions:
            yield {**base, "question": q, "answer": None, "error": prepared["error"]}
        return
    audio = AudioInput(file or path, prepared.get("segs"), mels=prepared["mels"], seconds=prepared["seconds"],
                       sha256=prepared["sha256"])
    vocabulary = reading.vocabulary
    ranked = bool(vocabulary) and TAGS_QUESTION in questions
    asked = [q for q in questions if not (ranked and q == TAGS_QUESTION)]
    step = max(1, model.options.parallel)
    for g in range(0, len(asked), step):
        group = asked[g:g + step]
        t0 = time.perf_counter()
        try:
            results = model.ask_many(audio, group, request=req, parallel=step)
        except MufunError as exc:
            msg = str(exc).replace(file, path) if file else str(exc)
            for q in group:
                yield {**base, "question": q, "answer": None, "error": msg}
            continue
        seconds = round(time.perf_counter() - t0, 3)
        for q, r in zip(group, results):
            timings = {**prepared["timings"], **r.timings} if "encoder" in r.timings else dict(r.timings)
            parsed, error = parsed_answer(r.text), None
            if req.schema is not None:  # a constrained answer cut off or breaking the schema fails
                try:
                    finished_json(r.text, req.max_tokens, req.schema)
                except MufunError as exc:
                    error = str(exc)
            yield {**base, "question": q, "answer": r.text, **({"parsed": parsed} if parsed is not None else {}),
                   "prompt_tokens": r.prompt_tokens,
                   "audio_tokens": r.audio_tokens, "completion_tokens": len(r.tokens),
                   "timings": {k: round(v, 4) for k, v in timings.items()}, "seconds": seconds, "error": error}
    if ranked:
        t0 = time.perf_counter()
        try:
            tags = model.tags(audio, vocabulary=vocabulary, max_tokens=req.max_tokens)
        except MufunError as exc:
            yield {**base, "question": TAGS_QUESTION, "answer": None,
                   "error": str(exc).replace(file, path) if file else str(exc)}
            return
        yield {**base, "question": TAGS_QUESTION, "answer": json.dumps(tags, ensure_ascii=False), "parsed": tags,
               "timings": {k: round(v, 4) for k, v in prepared["timings"].items()},
               "seconds": round(time.perf_counter() - t0, 3), "error": None}


def pending(files: list[str], questions: list[str], out: Path,
            settings: str = "") -> tuple[list[tuple[str, list[str]]], int]:
    """(file, questions still to answer) for each file with any left, and how many are done.
    A pair is done when `out` holds its answer made with these settings from the file as it
    is now (same size and modification time); a failed pair, or one whose file or settings
    changed, is answered again (its new line follows the old one)."""
    done = read_done(out, settings)
    stats = {f: file_stat(f) for f in files}
    todo = [(f, [q for q in questions if done.get((f, q)) != stats[f] or stats[f] is None]) for f in files]
    skipped = sum(len(questions) - len(qs) for _, qs in todo)
    return [(f, qs) for f, qs in todo if qs], skipped


def count(summary: Summary, rec: dict) -> None:
    if rec["error"] is None:
        summary.done += 1
    else:
        summary.failed += 1


def run_batch(model, req: Request, files: list[str], questions: list[str], out: Path,
              progress: Callable[[int], object] | None = None, prefetch: int = 2,
              reading: Reading = Reading()) -> Summary:
    """Every (file, question) not yet in `out` answered by `model` (a mufun_local.Model), each
    file read as `reading` says."""
    with journal_lock(out):
        return _run_batch(model, req, files, questions, out, progress, prefetch, reading)


def _run_batch(model, req, files, questions, out, progress, prefetch, reading) -> Summary:
    settings = settings_key(model, req, reading)
    todo, skipped = pending(files, questions, out, settings)
    summary = Summary(skipped=skipped)
    pool = ThreadPoolExecutor(max_workers=max(1, prefetch))
    futures: dict[str, Future] = {}

    def schedule(i: int) -> None:
        for f, _ in todo[i:i + prefetch + 1]:
            if f not in futures:
                futures[f] = pool.submit(prepare, f, model.mel_filters, None, reading.excerpt)

    try:
        with open(out, "a", encoding="utf-8") as fh:
            for i, (path, qs) in enumerate(todo):
                schedule(i)
                for rec in answer_file(model, req, path, qs, futures.pop(path).result(), settings=settings,
                                       reading=reading):
                    write_record(fh, rec)
                    count(summary, rec)
                    progress and progress(1)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return summary


RECORD_START = b'{"path": '  # every record's first key (a half-written line starts so)


def record_line(rec: dict) -> str:
    return json.dumps(rec, ensure_ascii=False) + "\n"


def write_record(fh, rec: dict) -> None:
    try:
        fh.write(record_line(rec))
        fh.flush()
    except OSError as exc:  # a full disk: say which file (the CLI prints it in one line)
        if exc.filename or not exc.errno:
            raise
        raise OSError(exc.errno, exc.strerror, getattr(fh, "name", None)) from None
