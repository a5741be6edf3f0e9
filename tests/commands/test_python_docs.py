"""Every Python example in docs/python.md and README.md runs as written, on the tiny model
(`$MUFUN_MODEL`), in a folder holding `song.flac` and `other.flac`."""
from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def examples(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(encoding="utf-8"), flags=re.S)


DOCS = [(doc, i, code) for doc in ("docs/python.md", "README.md") for i, code in enumerate(examples(doc))]


def test_the_docs_have_examples():
    assert len([d for d in DOCS if d[0] == "docs/python.md"]) >= 6
    assert [d for d in DOCS if d[0] == "README.md"]


@pytest.mark.parametrize("doc,i,code", DOCS, ids=[f"{d}:{i}" for d, i, _ in DOCS])
def test_example_runs(doc, i, code, tiny_q4, audio_dir, tmp_path, monkeypatch):
    shutil.copy(audio_dir / "song22k.flac", tmp_path / "song.flac")
    shutil.copy(audio_dir / "long48k.flac", tmp_path / "other.flac")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MUFUN_MODEL", str(tiny_q4))
    monkeypatch.setenv("MUFUN_HOME", str(tmp_path / "home"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{doc} example {i + 1}", "exec"), {"__name__": "__main__"})
    assert out.getvalue().strip(), "an example shows something"
