"""`batch --tags` and `--format csv|parquet`: the JSONL journal as a table.

The journal stays the record of truth (resumable, one line per answer); a table is written
from it at the end of a run, and on Ctrl-C: one row per (file, question), the last line of
each pair, with a parsed JSON answer's fields as columns (lists joined with "; ", nested
objects as `outer.inner`), so a `--tags` run is one row per file.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import MufunError
from ..files import write_atomic

FORMATS = ("jsonl", "csv", "parquet")

BASE_COLUMNS = ("path", "question", "sha256", "model", "settings", "error", "answer", "completion_tokens", "seconds")


def table_path(out: Path, fmt: str) -> Path:
    """Where the table of a journal goes: beside it, with the format's suffix."""
    path = out.with_suffix("." + fmt)
    if path == out:
        raise MufunError(f"--out {out} is the JSONL journal; give it a .jsonl name and the {fmt} goes beside it")
    return path


def rows(records: list[dict]) -> list[dict]:
    last = {(r["path"], r["question"]): r for r in records}
    out = []
    for r in last.values():
        row = {k: r.get(k) for k in BASE_COLUMNS}
        if isinstance(r.get("parsed"), dict):
            row.update(_flat(r["parsed"]))
        out.append(row)
    return out


def _flat(value: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in value.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, name + "."))
        elif isinstance(v, list):
            out[name] = "; ".join(str(x) for x in v)
        else:
            out[name] = v
    return out


def write_table(journal: Path, fmt: str) -> Path | None:
    """Write the journal's table (csv or parquet) atomically beside it (files.write_atomic); None for jsonl."""
    from .local import read_records
    if fmt == "jsonl":
        return None
    path = table_path(journal, fmt)
    table = rows(read_records(journal))
    columns = list(BASE_COLUMNS) + sorted({k for row in table for k in row} - set(BASE_COLUMNS))
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise MufunError("--format parquet needs pyarrow: pip install pyarrow") from None

    def write(fh) -> None:
        if fmt == "csv":
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            w = csv.DictWriter(text, fieldnames=columns)
            w.writeheader()
            w.writerows(table)
            text.flush()
            text.detach()  # the binary file stays open for write_atomic to close
        else:
            pq.write_table(pa.table({c: pa.array(_one_kind([row.get(c) for row in table])) for c in columns}), fh)
    write_atomic(path, write)
    return path


def _one_kind(values: list) -> list:
    """A column as one type: values of several kinds (a model's answers vary) become text."""
    if len({type(v) for v in values if v is not None}) > 1:
        return [None if v is None else str(v) for v in values]
    return values
