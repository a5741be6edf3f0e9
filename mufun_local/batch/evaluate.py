"""`mufun-local eval`: a MuCUE-format multiple-choice benchmark, run as the paper runs it.

An item holds `question`, `choices_text`, `correct_choice` (or `answer`), its audio
(`audio: {"path": ...}`, a plain path, or `{"bytes": ...}` as a parquet export stores it)
and `time_seg` ([start, end] seconds, or empty for the whole file). The prompt is exactly
MuCUE-Bench's (scripts/eval_single.py): INSTRUCTION + question + " " + choices_text, with the
audio before it as the model's `chat()` puts it (that is `ask` without an <audio> marker),
greedy, 64 new tokens.

The answer's letter is then taken by rules (extract_letter), where the paper asks Qwen3-8B
to extract it: the rules read a leading letter ("B", "(B)", "B. rock"), a stated one ("the
answer is B", "option B") or an answer that names exactly one option's text; anything else
is no answer (counted wrong). An LLM extractor may still find a letter in such a ramble, so
rule-based accuracy can only be the same or lower.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import MufunError

INSTRUCTION = "Choose the correct option for the question based on the audio. "
MAX_TOKENS = 64
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")
LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Item:
    task: str
    index: int
    question: str
    choices_text: str
    correct: str
    audio: str
    segs: tuple[float, float] | None

    @property
    def key(self) -> str:
        return f"{self.task}/{self.index}"

    @property
    def prompt(self) -> str:
        return INSTRUCTION + self.question + " " + self.choices_text


# ------------------------------------------------------------------ reading a set

def _task_of(path: Path) -> str:
    """A file's task name: its stem without a shard suffix (gtzan-00000-of-00002 -> gtzan)."""
    return re.sub(r"-\d{5}-of-\d{5}$", "", path.stem)


def _rows(path: Path) -> list[dict]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except ImportError:
        raise MufunError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    except (OSError, ValueError) as exc:
        raise MufunError(f"{path}: not a readable item list ({type(exc).__name__}: {str(exc)[:200]})") from None
    if isinstance(data, dict):  # {"data": [...]} or {"items": [...]}
        data = data.get("data", data.get("items"))
    if not isinstance(data, list):
        raise MufunError(f"{path}: expected a list of items")
    return data


def _segs(value) -> tuple[float, float] | None:
    if not value:
        return None
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError):
        raise MufunError(f"time_seg {value!r}: expected [start, end] in seconds") from None
    return start, end


def _item(row, path: Path, index: int, audio_dir: Path) -> Item:
    if not isinstance(row, dict):
        raise MufunError(f"{path}: item {index} is not an object")
    task = str(row.get("task") or row.get("data_name") or _task_of(path))
    try:
        question, choices = str(row["question"]), str(row["choices_text"])
        correct = str(row.get("correct_choice", row.get("answer"))).strip()
    except KeyError as exc:
        raise MufunError(f"{path}: item {index} has no {exc}") from None
    audio = row.get("audio")
    if isinstance(audio, dict) and audio.get("bytes"):
        ext = Path(str(audio.get("path") or "a.wav")).suffix or ".wav"
        audio_dir.mkdir(parents=True, exist_ok=True)
        target = audio_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', task)}-{index}{ext}"
        if not target.exists():
            target.write_bytes(audio["bytes"])
        file = target
    else:
        name = audio.get("path") if isinstance(audio, dict) else audio
        if not name:
            raise MufunError(f"{path}: item {index} has no audio path")
        file = Path(str(name))
        file = file if file.is_absolute() else path.parent / file
    return Item(task, index, question, choices, correct, str(file), _segs(row.get("time_seg")))


def load_items(data: str | Path, tasks: Iterable[str] = (), limit: int | None = None,
               audio_dir: Path | None = None) -> list[Item]:
    """The items of a MuCUE-format set: one .json/.jsonl/.parquet file, or a folder of them
    (searched recursively; a file per task). `limit`: the first N items of each task.
    Audio stored inside the rows is written once under `audio_dir`."""
    data = Path(data)
    if not data.exists():
        raise MufunError(f"{data}: no such file or folder")
    if data.is_file() and data.suffix not in DATA_SUFFIXES:
        raise MufunError(f"{data}: not a .json, .jsonl or .parquet item file")
    files = [data] if data.is_file() else sorted(p for p in data.rglob("*") if p.suffix in DATA_SUFFIXES)
    if not files:
        raise MufunError(f"{data}: no .json, .jsonl or .parquet item files in it")
    wanted = set(tasks)
    items: list[Item] = []
    counts: dict[str, int] = {}
    for f in files:
        for i, row in enumerate(_rows(f)):
            item = _item(row, f, i, audio_dir or data.parent / ".mufun-eval-audio")
            if wanted and item.task not in wanted:
                continue
            if limit is not None and counts.get(item.task, 0) >= limit:
                continue
            counts[item.task] = counts.get(item.task, 0) + 1
            items.append(item)
    if wanted - set(counts):
        raise MufunError(f"no items for task(s) {', '.join(sorted(wanted - set(counts)))} in {data}")
    return items


# ------------------------------------------------------------------ letters

def parse_choices(choices_text: str) -> dict[str, str]:
    """{"A": "rock", ...} from "(A) rock (B) pop", "A. rock\\nB. pop" and the like."""
    marks = list(re.finditer(r"(?:^|(?<=\s))\(?([A-H])[\).:]\s*", choices_text))
    out = {}
    for m, nxt in zip(marks, marks[1:] + [None]):
        out[m.group(1)] = choices_text[m.end():nxt.start() if nxt else None].strip()
    return out


def extract_letter(answer: str, choices_text: str) -> str | None:
    """The option letter an answer gives, by rules (see the module docstring), or None."""
    options = parse_choices(choices_text)
    letters = "".join(options) or LETTERS[:4]
    text = answer.strip()
    m = re.match(rf"^\(?([{letters}])(?:[\).:,]|$)", text)  # not "A jazz tune": the article
    if m:
        return m.group(1)
    m = re.search(rf"(?:answer|option|choice)(?:\s+is)?[\s:]*\(?([{letters}])\b", text, re.IGNORECASE)
    if m:
        return m.group(1).upper()
    m = re.findall(rf"\(([{letters}])\)", text)
    if len(set(m)) == 1:
        return m[0]
    low = text.lower()
    named = [k for k, v in options.items() if v and v.lower() in low]
    if len(named) == 1:
        return named[0]
    return None


def correct_letter(correct: str) -> str:
    """The key's letter: "B", "(B)", "B. rock" -> "B"."""
    m = re.match(r"^\(?([A-H])\b", correct.strip())
    return m.group(1) if m else correct.strip()


# ------------------------------------------------------------------ running

def request(model):
    """The paper's settings (MuCUE's eval_single.py): greedy, 64 new tokens."""
    return model.request(max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0, top_k=0, seed=0)


def run_eval(model, req, items: list[Item], out: Path, model_id: str, settings: str,
             progress: Callable[[int], object] | None = None) -> tuple[int, int, int]:
    """Answer every item not yet in `out` with these settings; (done, skipped, failed).
    The journal is batch's: resumable, locked, a damaged tail repaired or refused."""
    from .local import journal_lock, resume_records, write_record

    with journal_lock(out):
        done_keys = {r.get("item") for r in resume_records(out)
                     if r.get("error") is None and r.get("settings") == settings}
        todo = [it for it in items if it.key not in done_keys]
        done = failed = 0
        with open(out, "a", encoding="utf-8") as fh:
            for it in todo:
                rec = {"path": it.audio, "question": it.prompt, "task": it.task, "item": it.key,
                       "segs": list(it.segs) if it.segs else None, "correct": correct_letter(it.correct),
                       "model": model_id, "settings": settings}
                try:
                    res = model.ask(it.audio, it.prompt, segs=it.segs, request=req).result()
                    pred = extract_letter(res.text, it.choices_text)
                    rec.update(answer=res.text, pred=pred, ok=pred == rec["correct"], error=None)
                    done += 1
                except MufunError as exc:
                    rec.update(answer=None, pred=None, ok=False, error=str(exc))
                    failed += 1
                write_record(fh, rec)
                progress and progress(1)
    return done, len(items) - len(todo), failed


def latest(records: list[dict], settings: str | None = None) -> dict[str, dict]:
    """Each item's last record (made with `settings`, when given)."""
    out = {}
    for r in records:
        if settings is None or r.get("settings") == settings:
            out[r.get("item")] = r
    return out


def accuracy(records: dict[str, dict]) -> list[tuple[str, int, int, int]]:
    """(task, answered, correct, failed) per task, in name order."""
    rows: dict[str, list[int]] = {}
    for r in records.values():
        row = rows.setdefault(str(r.get("task")), [0, 0, 0])
        if r.get("error") is not None:
            row[2] += 1
        else:
            row[0] += 1
            row[1] += bool(r.get("ok"))
    return [(task, *rows[task]) for task in sorted(rows)]


def _pct(correct: int, n: int) -> str:
    return f"{100 * correct / n:.1f}" if n else "—"


def format_tables(runs: list[tuple[str, dict[str, dict]]]) -> str:
    """Markdown: per-task accuracy of each run side by side, then the average over tasks
    (MuCUE's AVG) and over all items."""
    tables = [(name, {t: (n, c, f) for t, n, c, f in accuracy(recs)}) for name, recs in runs]
    tasks = sorted({t for _, tab in tables for t in tab})
    head = "| task | items | " + " | ".join(f"{name} accuracy %" for name, _ in tables) + " |"
    lines = [head, "|" + "---|" * (2 + len(tables))]
    for t in tasks:
        n = max(tab.get(t, (0, 0, 0))[0] + tab.get(t, (0, 0, 0))[2] for _, tab in tables)
        cells = [_pct(tab[t][1], tab[t][0]) + (f" ({tab[t][2]} failed)" if tab[t][2] else "")
                 if t in tab else "—" for _, tab in tables]
        lines.append(f"| {t} | {n} | " + " | ".join(cells) + " |")
    avg = []
    for _, tab in tables:
        answered = [100 * c / n for n, c, _ in tab.values() if n]
        avg.append(f"**{sum(answered) / len(answered):.1f}**" if answered else "—")
    lines.append("| **average over tasks** | | " + " | ".join(avg) + " |")
    micro = [_pct(sum(c for _, c, _ in tab.values()), sum(n for n, _, _ in tab.values())) for _, tab in tables]
    lines.append(f"| all items | {len(runs[0][1])} | " + " | ".join(micro) + " |")
    return "\n".join(lines)


def differing(a: dict[str, dict], b: dict[str, dict]) -> list[tuple[str, str | None, str | None, str]]:
    """(item, letter of a, letter of b, correct letter) where the two runs' letters differ."""
    out = []
    for key in sorted(set(a) & set(b)):
        ra, rb = a[key], b[key]
        if ra.get("error") is None and rb.get("error") is None and ra.get("pred") != rb.get("pred"):
            out.append((key, ra.get("pred"), rb.get("pred"), str(ra.get("correct"))))
    return out
