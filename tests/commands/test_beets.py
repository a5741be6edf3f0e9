"""The beets plugin against real beets: a library in a temporary folder, generated audio
imported with `beet import -A`, `beet mufun`, the new fields listed and queried, resume, a
file that cannot be read, the `fields:` mapping, and tagging during import (`auto`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("beets")


@pytest.fixture(scope="module")
def tagging_model(tmp_path_factory):
    """A tiny model whose random answers fit the tag schema for the test songs (seed 0's
    strings hold invalid UTF-8 that breaks maxLength, as test_batch notes)."""
    from mufun_local.convert.run import convert
    from mufun_local.synthetic import generate
    root = tmp_path_factory.mktemp("beets-model")
    ckpt = generate(root / "ckpt", "tiny", seed=1)
    return convert(str(ckpt), root / "model", encoder_backends=("ctranslate2",), quiet=True)


def _beet(env, *args, check=True):
    p = subprocess.run([sys.executable, "-m", "beets", *args], env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def _configure(root: Path, model: Path, **mufun) -> dict:
    lines = [f"directory: {root / 'music'}", f"library: {root / 'library.db'}", "plugins: mufun",
             "import:", "    copy: no", "    write: no", "    quiet: yes", "mufun:", f"    model: {model}"]
    for k, v in mufun.items():
        if isinstance(v, dict):
            lines.append(f"    {k}:")
            lines += [f"        {a}: {b}" for a, b in v.items()]
        else:
            lines.append(f"    {k}: {v}")
    (root / "beets").mkdir(exist_ok=True)
    (root / "beets" / "config.yaml").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, BEETSDIR=str(root / "beets"), MUFUN_HOME=str(root / "mufun-home"), HOME=str(root))
    return env


def _songs(tmp_path, audio_dir, names):
    d = tmp_path / "incoming"
    d.mkdir(exist_ok=True)
    for src, n in names.items():
        shutil.copy(audio_dir / src, d / n)
    return d


def test_beet_mufun_tags_queries_resumes_and_maps_fields(tmp_path, tagging_model, audio_dir):
    env = _configure(tmp_path, tagging_model)
    incoming = _songs(tmp_path, audio_dir, {"song22k.flac": "a.flac", "song44k.wav": "b.wav", "long48k.flac": "c.flac"})
    _beet(env, "import", "-A", str(incoming))
    assert len(_beet(env, "ls").stdout.strip().splitlines()) == 3
    (incoming / "c.flac").write_bytes(b"not audio any more")  # one item that cannot be read

    p = _beet(env, "mufun")
    assert "mufun: tagged 2, skipped 0 (already tagged), failed 1" in p.stdout, p.stdout + p.stderr
    assert "c.flac" in p.stderr and "no sample rate" in p.stderr  # the failure is logged, the run went on
    genres = _beet(env, "ls", "-f", "$path|$mufun_genre|$mufun_settings|$mufun_vocals").stdout.strip().splitlines()
    rows = {Path(line.split("|")[0]).name: line.split("|")[1:] for line in genres}
    assert rows["c.flac"][0] == "$mufun_genre"  # the unreadable one has none
    assert rows["a.flac"][0] and rows["b.wav"][0] and rows["a.flac"][1] == rows["b.wav"][1]  # one settings hash
    assert {rows["a.flac"][2], rows["b.wav"][2]} <= {"none", "male", "female", "mixed", "choir"}
    # a query on the new field finds the tagged item
    genre = rows["a.flac"][0].split()[0]
    hits = _beet(env, "ls", "-f", "$path", f"mufun_genre:{genre}").stdout.split()
    assert "a.flac" in [Path(h).name for h in hits] and "c.flac" not in [Path(h).name for h in hits]

    again = _beet(env, "mufun").stdout  # resume: only what is not tagged yet is asked
    assert "tagged 0, skipped 2 (already tagged), failed 1" in again, again
    assert "tagged 1, skipped 0" in _beet(env, "mufun", "-f", "path:" + str(incoming / "a.flac")).stdout

    # fields: copies an answer onto beets' own fields (off by default: genres stayed empty)
    a = "path:" + str(incoming / "a.flac")
    assert _beet(env, "ls", "-f", "$genres|$comments", a).stdout.strip() == "|"
    env = _configure(tmp_path, tagging_model, fields={"genre": "genres", "description": "comments"})
    _beet(env, "mufun", "-f", a)
    genres, comments, mine, desc = _beet(env, "ls", "-f", "$genres|$comments|$mufun_genre|$mufun_description",
                                         a).stdout.strip().split("|")
    assert genres == mine and comments == desc and mine
    env = _configure(tmp_path, tagging_model, fields={"bpm_guess": "bpm"})
    bad = _beet(env, "mufun", check=False)
    assert bad.returncode != 0 and "bpm_guess is not an answer field" in bad.stderr + bad.stdout


def test_auto_tags_during_import_and_a_bad_model_is_one_line(tmp_path, tagging_model, audio_dir):
    env = _configure(tmp_path, tagging_model, auto="yes")
    incoming = _songs(tmp_path, audio_dir, {"song22k.flac": "d.flac"})
    _beet(env, "import", "-A", str(incoming))
    settings = _beet(env, "ls", "-f", "$mufun_settings").stdout.strip()
    assert settings and settings != "$mufun_settings"
    assert "tagged 0, skipped 1" in _beet(env, "mufun").stdout
    env = _configure(tmp_path, tmp_path / "no-such-model")
    p = _beet(env, "mufun", "-f", check=False)
    assert p.returncode != 0 and "mufun:" in p.stderr and "Traceback" not in p.stderr, p.stderr
