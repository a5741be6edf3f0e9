"""`mufun-local batch`: one line per (file, question), errors recorded, resumable."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from audio_fixtures import music, write_audio
from mufun_local.cli import main
from helpers import open_model
from mufun_local.llm.llama import Sampling
from mufun_local.options import Request

QUESTIONS = ["What genre is this?", "Describe the mood."]


@pytest.fixture
def library(tmp_path):
    lib = tmp_path / "lib"
    (lib / "sub").mkdir(parents=True)
    write_audio(lib / "a.wav", music(3.0, 22050, 2, seed=1), 22050)
    write_audio(lib / "sub" / "b.flac", music(4.0, 44100, 1, seed=2), 44100)
    write_audio(lib / "sub" / "c.mp3", music(2.0, 44100, 2, seed=3), 44100)
    (lib / "empty.wav").write_bytes(b"")
    (lib / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(2000))
    (lib / "notes.txt").write_text("not audio")  # not an audio extension: ignored
    return lib


def greedy_answer(model_dir, path, question):
    with open_model(model_dir) as model:
        return model.ask(path, question, request=Request(8, Sampling(temperature=0.0, seed=0))).text()


def run_batch_cli(capsys, model, lib, out, *extra):
    args = ["batch", str(lib), "-m", str(model), "--out", str(out), "--max-tokens", "8", "-q"]
    for q in QUESTIONS:
        args += ["--question", q]
    code = main(args + list(extra))
    capsys.readouterr()
    return code


def lines(out):
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_one_line_per_file_and_question(capsys, tmp_path, tiny_q4, library):
    out = tmp_path / "res.jsonl"
    assert run_batch_cli(capsys, tiny_q4, library, out) == 0
    recs = lines(out)
    assert len(recs) == 5 * len(QUESTIONS)
    by = {(os.path.basename(r["path"]), r["question"]): r for r in recs}
    for name in ("a.wav", "b.flac", "c.mp3"):
        for q in QUESTIONS:
            r = by[(name, q)]
            assert r["error"] is None and r["sha256"] and r["audio_tokens"] == 300
            assert r["answer"] == greedy_answer(tiny_q4, r["path"], q)
    assert "file is empty" in by[("empty.wav", QUESTIONS[0])]["error"]
    assert "corrupt.flac" in by[("corrupt.flac", QUESTIONS[1])]["error"]


def test_rerun_skips_what_is_done(capsys, tmp_path, tiny_q4, library):
    out = tmp_path / "res.jsonl"
    run_batch_cli(capsys, tiny_q4, library, out)
    before = out.read_text()
    run_batch_cli(capsys, tiny_q4, library, out)
    after = out.read_text()
    assert after.startswith(before)  # nothing answered is answered again; failures are retried
    added = [json.loads(line) for line in after[len(before):].splitlines()]
    assert sorted((os.path.basename(r["path"]), r["question"]) for r in added) == sorted(
        (name, q) for name in ("corrupt.flac", "empty.wav") for q in QUESTIONS)
    assert all(r["error"] for r in added)


def test_killed_midway_resumes_without_duplicates_or_losses(tmp_path, tiny_q4, library):
    out = tmp_path / "res.jsonl"
    cmd = [sys.executable, "-m", "mufun_local", "batch", str(library), "-m", str(tiny_q4), "--out", str(out),
           "--max-tokens", "8", "-q"] + sum((["--question", q] for q in QUESTIONS), [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(out, "a") as fh:
        fh.write('{"path": "half-written')  # a crash mid-line
    assert subprocess.run(cmd).returncode == 0
    recs = lines(out)
    answered = [(r["path"], r["question"]) for r in recs if r["error"] is None]
    assert len(answered) == len(set(answered)) == 3 * len(QUESTIONS)  # no answer lost or given twice
    assert len({(r["path"], r["question"]) for r in recs}) == 5 * len(QUESTIONS)  # failures retried


def test_questions_share_one_encoding(tmp_path, tiny_q4, library, monkeypatch):
    from mufun_local.batch.local import run_batch
    from mufun_local.encoder.base import EncoderBase as Encoder
    calls = []
    real = Encoder.hidden_states
    monkeypatch.setattr(Encoder, "hidden_states", lambda self, mel, **kw: calls.append(1) or real(self, mel, **kw))
    with open_model(tiny_q4) as model:
        s = run_batch(model, Request(4, Sampling(temperature=0.0)), [str(library / "a.wav")], QUESTIONS + ["Tempo?"],
                      tmp_path / "o.jsonl")
    assert s.done == 3 and len(calls) == 1


def test_inputs_from_lists_and_globs(tmp_path, library):
    from mufun_local.batch.local import expand_inputs
    (tmp_path / "list.txt").write_text(f"{library / 'a.wav'}\n# comment\n{library / 'sub' / 'b.flac'}\n")
    (tmp_path / "list.csv").write_text(f"path,label\n{library / 'sub' / 'c.mp3'},x\n")
    files = expand_inputs([str(tmp_path / "list.txt"), str(tmp_path / "list.csv"), str(library / "sub" / "*.flac")])
    assert [os.path.basename(f) for f in files] == ["a.wav", "b.flac", "c.mp3"]


def _comparable(recs):
    """Each pair's last record (a retried failure's line follows its first), sorted."""
    keys = ("path", "question", "sha256", "answer", "error", "audio_tokens", "prompt_tokens", "completion_tokens",
            "settings", "stat")
    last = {(r["path"], r["question"]): r for r in recs}
    return sorted(json.dumps({k: r.get(k) for k in keys}, sort_keys=True) for r in last.values())


def test_ray_local_gives_the_same_records_and_resumes(capsys, tmp_path, tiny_q4, library, monkeypatch):
    """--ray local (a 2-CPU Ray on this machine): the local run's records, and a partial
    output file is completed without duplicates. Paths relative to the working directory."""
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "local.jsonl"
    assert run_batch_cli(capsys, tiny_q4, "lib", local) == 0
    assert lines(local)[0]["path"].startswith("lib" + os.sep)
    out = tmp_path / "ray.jsonl"
    out.write_text("".join(local.read_text().splitlines(keepends=True)[:3]))  # as if stopped after 3
    cmd = [sys.executable, "-m", "mufun_local", "batch", "lib", "-m", str(tiny_q4), "--out", str(out),
           "--max-tokens", "8", "--ray", "local"] + sum((["--question", q] for q in QUESTIONS), [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done 4, skipped 2" in proc.stderr and "failed 4" in proc.stderr  # the failed one is retried
    assert _comparable(lines(out)) == _comparable(lines(local))


def test_ray_not_installed_says_how(capsys, tmp_path, tiny_q4, library, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["batch", str(library), "-m", str(tiny_q4), "--question", "Q?", "--out", str(tmp_path / "o.jsonl"), "--ray"])
    err = capsys.readouterr().err
    assert code == 1 and "pip install 'mufun-local[ray]'" in err and "Traceback" not in err


def test_any_failure_of_one_file_is_its_error_and_the_run_goes_on(tmp_path, tiny_q4, monkeypatch):
    """A sample-rate bomb and a decoder that raises something unexpected: each is that file's
    error line; the other file is answered; a resume does not stop on them either."""
    import soundfile as sf

    from mufun_local.batch import local as batch_mod
    from mufun_local.batch.local import run_batch
    lib = tmp_path / "lib"
    lib.mkdir()
    sf.write(str(lib / "bomb.wav"), [0.0] * 16, 44101, subtype="PCM_16")
    write_audio(lib / "good.wav", music(3.0, 16000, 1), 16000)
    write_audio(lib / "weird.wav", music(3.0, 16000, 1, seed=5), 16000)
    real = batch_mod.prepare

    def prepare(path, filters, file=None, excerpt=None):
        if path.endswith("weird.wav"):
            raise_in = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("decoder fell over"))  # noqa: E731
            monkeypatch.setattr("mufun_local.audio.windows.load_log_mels", raise_in)
            try:
                return real(path, filters, file, excerpt)
            finally:
                monkeypatch.undo()
        return real(path, filters, file, excerpt)
    monkeypatch.setattr(batch_mod, "prepare", prepare)
    files = sorted(str(p) for p in lib.iterdir())
    model = open_model(tiny_q4)
    out = tmp_path / "o.jsonl"
    s = run_batch(model, Request(4, Sampling(temperature=0.0)), files, ["Genre?"], out, prefetch=0)
    by = {os.path.basename(r["path"]): r for r in lines(out)}
    assert (s.done, s.failed) == (1, 2)
    assert "shares no common factor" in by["bomb.wav"]["error"]
    assert "RuntimeError: decoder fell over" in by["weird.wav"]["error"]
    assert by["good.wav"]["error"] is None
    model.close()


def _record(path, question, answer, settings="s", error=None):
    from mufun_local.batch.local import file_stat
    return json.dumps({"path": path, "question": question, "answer": answer, "settings": settings,
                       "stat": file_stat(path), "error": error}, ensure_ascii=False)


def test_resume_keeps_a_whole_last_record_without_newline_and_splits_on_newline_only(tmp_path, monkeypatch):
    from mufun_local.batch.local import pending, read_done
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"a")
    out = tmp_path / "o.jsonl"
    sep = "one\u2028two\u2029three\x85four\x0c\x1c"  # line separators Python's splitlines() splits on
    out.write_text(_record("a.wav", "q1", sep) + "\n" + _record("a.wav", "q2", "ok"), encoding="utf-8")
    assert set(read_done(out, "s")) == {("a.wav", "q1"), ("a.wav", "q2")}
    assert out.read_text(encoding="utf-8").endswith('"error": null}\n')  # the newline added, nothing cut
    assert pending(["a.wav"], ["q1", "q2"], out, "s") == ([], 2)
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(_record("b.wav", "q1", "half")[:-9])  # a crash mid-record: that part goes
    assert set(read_done(out, "s")) == {("a.wav", "q1"), ("a.wav", "q2")}
    assert len(out.read_text(encoding="utf-8").split("\n")) == 3


def test_resume_answers_again_what_failed_or_changed(tmp_path, monkeypatch):
    """Done means: answered, with these settings, from the file as it is now."""
    import os

    from mufun_local.batch.local import pending
    monkeypatch.chdir(tmp_path)
    for name in ("same.wav", "edited.wav", "failed.wav"):
        (tmp_path / name).write_bytes(b"x")
    out = tmp_path / "o.jsonl"
    lines = [_record("same.wav", "q", "a"), _record("edited.wav", "q", "a"),
             _record("failed.wav", "q", None, error="boom"), _record("same.wav", "q2", "a", settings="other")]
    out.write_text("\n".join(lines) + "\n")
    (tmp_path / "edited.wav").write_bytes(b"xy")
    os.utime(tmp_path / "edited.wav", ns=(1, 1))
    todo, skipped = pending(["same.wav", "edited.wav", "failed.wav"], ["q", "q2"], out, "s")
    assert skipped == 1 and todo == [("same.wav", ["q2"]), ("edited.wav", ["q", "q2"]), ("failed.wav", ["q", "q2"])]


def test_a_resumed_run_with_other_settings_answers_again(capsys, tmp_path, tiny_q4, library):
    out = tmp_path / "res.jsonl"
    run_batch_cli(capsys, tiny_q4, library, out)
    n = len(lines(out))
    run_batch_cli(capsys, tiny_q4, library, out, "--max-tokens", "3")
    recs = lines(out)
    assert len(recs) == 2 * n and len({r["settings"] for r in recs}) == 2


def test_two_runs_on_one_out_cannot_interleave(tmp_path, tiny_q4):
    from mufun_local.batch.local import journal_lock, run_batch
    from mufun_local.errors import MufunError
    out = tmp_path / "o.jsonl"
    with open_model(tiny_q4) as model, journal_lock(out):
        with pytest.raises(MufunError, match="another batch run is writing it"):
            run_batch(model, Request(2), [str(tmp_path / "x.wav")], ["q"], out)
    assert not out.exists() or out.read_text() == ""


@pytest.mark.parametrize("content", [b"my notes, no newline at the end", b"a,b,c\n1,2,3\n",
                                     _record("a.wav", "q1", "ok").encode() + b"\nnot a record"])
def test_an_out_file_that_is_not_a_journal_is_refused_untouched(capsys, tmp_path, tiny_q4, library, content):
    out = tmp_path / "important.txt"
    out.write_bytes(content)
    code = run_batch_cli(capsys, tiny_q4, library, out)
    assert code != 0 and out.read_bytes() == content


def test_tags_to_csv_and_parquet_round_trip_and_resume(capsys, tmp_path, tiny_q4, library):
    """batch --tags: one constrained question per file; the table beside the journal has one
    row per (file, question) with the answer's fields as columns, read back equal to the
    journal's; a resume answers nothing twice and writes the table again. Every answer is
    within the schema: the grammar admits no byte run that is not UTF-8 (grammar.py)."""
    import csv

    pq = pytest.importorskip("pyarrow.parquet")
    from mufun_local.tags import TAGS_SCHEMA
    out = tmp_path / "tags.jsonl"
    args = ["batch", str(library), "-m", str(tiny_q4), "--tags", "--out", str(out), "-q"]
    main(args + ["--format", "csv"])
    recs = [r for r in lines(out) if "parsed" in r]
    assert len(recs) == 3 and all(set(r["parsed"]) == set(TAGS_SCHEMA["properties"]) for r in recs)
    assert all(r["error"] is None for r in recs), [r["error"] for r in recs]
    with open(out.with_suffix(".csv"), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and set(TAGS_SCHEMA["properties"]) <= set(rows[0])
    by = {row["path"]: row for row in rows}
    for r in recs:
        assert by[r["path"]]["genre"] == r["parsed"]["genre"]
        assert by[r["path"]]["instruments"] == "; ".join(r["parsed"]["instruments"])
    answered = [r for r in lines(out) if r["error"] is None]
    main(args + ["--format", "parquet"])
    assert [r for r in lines(out) if r["error"] is None][:len(answered)] == answered
    table = pq.read_table(out.with_suffix(".parquet")).to_pylist()
    assert sorted(t["path"] for t in table) == sorted(row["path"] for row in rows)
    last = {r["path"]: r for r in lines(out) if "parsed" in r}
    assert {t["path"]: t["vocals"] for t in table if t["path"] in last} == {p: r["parsed"]["vocals"]
                                                                          for p, r in last.items()}
    capsys.readouterr()


def test_schema_answers_validate_and_fill_columns(capsys, tmp_path, tiny_q4, library):
    import csv

    import jsonschema
    schema = {"type": "object", "properties": {"genre": {"enum": ["jazz", "rock", "pop"]},
                                               "vocals": {"type": "boolean"}},
              "required": ["genre", "vocals"], "additionalProperties": False}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    out = tmp_path / "o.jsonl"
    main(["batch", str(library), "-m", str(tiny_q4), "--question", "Tag it.", "--schema", str(tmp_path / "s.json"),
          "--out", str(out), "--format", "csv", "-q"])
    good = [r for r in lines(out) if r["error"] is None]
    assert len(good) == 3
    for r in good:
        jsonschema.validate(r["parsed"], schema)
    with open(out.with_suffix(".csv"), newline="", encoding="utf-8") as fh:
        rows = {row["path"]: row for row in csv.DictReader(fh)}
    assert {r["path"]: r["parsed"]["genre"] for r in good} == {p: rows[p]["genre"] for p in (r["path"] for r in good)}
    capsys.readouterr()


def test_a_table_may_not_replace_the_journal(capsys, tmp_path, tiny_q4, library):
    code = main(["batch", str(library), "-m", str(tiny_q4), "--question", "Q?", "--out", str(tmp_path / "t.csv"),
                 "--format", "csv"])
    assert code != 0 and "give it a .jsonl name" in capsys.readouterr().err


def test_tags_with_a_vocabulary_rank_its_terms_and_resume(capsys, tmp_path, tiny_q4, library):
    """batch --tags --vocabulary: each readable song's genre is a term of the file, with its
    probability and the runners-up, equal to Model.tags in this process; the table carries
    them; a resume asks nothing again, and another vocabulary is another setting."""
    import csv

    from mufun_local.tags import load_vocabulary
    genres = tmp_path / "genres.txt"
    genres.write_text("Synthpop\nShoegaze\nDream Pop\nJazz\n")
    out = tmp_path / "tags.jsonl"
    args = ["batch", str(library), "-m", str(tiny_q4), "--tags", "--vocabulary", str(genres), "--out", str(out), "-q"]
    assert main(args + ["--format", "csv"]) == 0
    recs = {os.path.basename(r["path"]): r for r in lines(out) if r["error"] is None}
    assert sorted(recs) == ["a.wav", "b.flac", "c.mp3"]
    vocab = load_vocabulary(str(genres))
    with open_model(tiny_q4, keep_audio_models=True) as model:
        for r in recs.values():
            p = r["parsed"]
            assert p["genre"] in vocab["genre"] and p["genre_top"][0] == p["genre"] and 0 < p["genre_score"] <= 1
            assert p == model.tags(r["path"], vocabulary=vocab)
    with open(out.with_suffix(".csv"), newline="", encoding="utf-8") as fh:
        rows = {os.path.basename(row["path"]): row for row in csv.DictReader(fh)}
    assert rows["a.wav"]["genre"] == recs["a.wav"]["parsed"]["genre"]
    assert float(rows["a.wav"]["genre_score"]) == recs["a.wav"]["parsed"]["genre_score"]
    def answered():
        return len([r for r in lines(out) if r["error"] is None])
    n = answered()
    main(args)                                               # the two unreadable files are tried again
    assert answered() == n                                   # resumed: nothing answered is asked again
    genres.write_text("Synthpop\nJazz\n")
    assert main(args) == 0 and answered() == 2 * n           # another vocabulary: asked again
    capsys.readouterr()
    assert main(["batch", str(library), "-m", str(tiny_q4), "--vocabulary", str(genres), "--out", str(out)]) != 0
    assert "give --tags too" in capsys.readouterr().err


def test_excerpt_reads_the_middle_of_each_song(capsys, tmp_path, tiny_q4, audio_dir):
    """--excerpt S: the middle S seconds by the declared length (the record's segs), answered as
    `ask --segs` answers that part; a shorter file whole; the excerpt is part of the settings."""
    import soundfile as sf
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("long48k.flac", "song22k.flac"):
        (lib / name).write_bytes((audio_dir / name).read_bytes())
    length = sf.info(str(lib / "long48k.flac")).duration
    out = tmp_path / "o.jsonl"
    assert main(["batch", str(lib), "-m", str(tiny_q4), "--question", "Genre?", "--excerpt", "10", "--temperature", "0",
                 "--max-tokens", "6", "--out", str(out), "-q"]) == 0
    recs = {os.path.basename(r["path"]): r for r in lines(out)}
    start = round((length - 10) / 2, 3)
    assert recs["long48k.flac"]["segs"] == [start, round(start + 10, 3)] and recs["long48k.flac"]["audio_tokens"] == 300
    short = sf.info(str(lib / "song22k.flac")).duration
    assert short > 10 or recs["song22k.flac"]["segs"] is None
    with open_model(tiny_q4) as model:
        want = model.ask(lib / "long48k.flac", "Genre?", segs=tuple(recs["long48k.flac"]["segs"]),
                         request=Request(6, Sampling(temperature=0.0, top_p=1.0, top_k=0, seed=0))).text()
    assert recs["long48k.flac"]["answer"] == want
    plain = tmp_path / "plain.jsonl"
    main(["batch", str(lib), "-m", str(tiny_q4), "--question", "Genre?", "--temperature", "0", "--max-tokens", "6",
          "--out", str(plain), "-q"])
    assert lines(plain)[0]["settings"] != lines(out)[0]["settings"]
