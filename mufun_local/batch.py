"""`mufun-local batch`: many files x many questions -> one JSON line each, resumable.

Lines are written and flushed as each answer finishes, so a crash loses nothing; running
again with the same --out skips every (path, question) already there. Decoding of the next
files runs in a small thread pool while the LLM answers about the current one; several
questions about one file encode it once (an in-memory embedding cache).
"""
from __future__ import annotations

import csv
import glob
import json
import os
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .errors import MufunError
from .pipeline import AudioInput, Pipeline

AUDIO_EXTENSIONS = {".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".wma",
                    ".webm", ".mp4"}


class MemoryCache:
    """The last few files' embeddings, with the disk cache's get/put interface."""

    def __init__(self, entries: int = 4):
        self.entries = entries
        self.data: OrderedDict[str, object] = OrderedDict()

    def get(self, key):
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        return None

    def put(self, key, emb) -> None:
        self.data[key] = emb
        while len(self.data) > self.entries:
            self.data.popitem(last=False)


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


def read_done(out: Path) -> set[tuple[str, str]]:
    """(path, question) pairs already answered or failed; trims a half-written last line."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(out, "r+b") as fh:
            fh.truncate(len(data))
    done = set()
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            done.add((rec["path"], rec["question"]))
        except (ValueError, KeyError, TypeError):
            continue
    return done


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0


def _prefetch(pipe: Pipeline, path: str):
    from .pipeline import Timer
    timings: dict[str, float] = {}
    windows, _ = pipe.load_windows(AudioInput(path), Timer(timings))
    return windows, timings


def run_batch(pipe: Pipeline, files: list[str], questions: list[str], out: Path, model_id: str,
              progress: Callable[[int], object] | None = None, prefetch: int = 2) -> Summary:
    from .embcache import file_hash

    pipe.cache = MemoryCache()
    done = read_done(out)
    todo = [(f, [q for q in questions if (f, q) not in done]) for f in files]
    summary = Summary(skipped=sum(len(questions) - len(qs) for _, qs in todo))
    todo = [(f, qs) for f, qs in todo if qs]
    pool = ThreadPoolExecutor(max_workers=max(1, prefetch))
    futures: dict[str, Future] = {}

    def schedule(i: int) -> None:
        for f, _ in todo[i:i + prefetch + 1]:
            if f not in futures:
                futures[f] = pool.submit(_prefetch, pipe, f)

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(out, "a", encoding="utf-8") as fh:
            for i, (path, qs) in enumerate(todo):
                schedule(i)
                base = {"path": path, "sha256": None, "segs": None, "model": model_id}
                try:
                    windows, decode_t = futures.pop(path).result()
                    base["sha256"] = file_hash(path)
                except MufunError as exc:
                    for q in qs:
                        _write(fh, {**base, "question": q, "answer": None, "error": str(exc)})
                        summary.failed += 1
                        progress and progress(1)
                    continue
                for q in qs:
                    rec = {**base, "question": q}
                    t0 = time.perf_counter()
                    try:
                        answer = "".join(pipe.ask([AudioInput(path, windows=windows)], q))
                        r = pipe.result
                        timings = {**decode_t, **r.timings} if "encoder" in r.timings else dict(r.timings)
                        rec.update(answer=answer, prompt_tokens=r.prompt_tokens, audio_tokens=r.audio_tokens,
                                   completion_tokens=len(r.tokens), timings={k: round(v, 4) for k, v in timings.items()},
                                   seconds=round(time.perf_counter() - t0, 3), error=None)
                        summary.done += 1
                    except MufunError as exc:
                        rec.update(answer=None, error=str(exc))
                        summary.failed += 1
                    _write(fh, rec)
                    progress and progress(1)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return summary


def _write(fh, rec: dict) -> None:
    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    fh.flush()
