"""`mufun-local eval` on a tiny MuCUE-format set built from generated audio: the paper's prompt
and settings, letters, resume, the table, and --compare."""
from __future__ import annotations

import json
import shutil

import pytest

from mufun_local.batch import evaluate
from mufun_local.pipeline import Pipeline
from helpers import assert_one_line_error, run_cli

CHOICES = "(A) rock (B) jazz (C) classical (D) hip hop"


@pytest.fixture
def mucue(tmp_path, audio_dir):
    """Three tasks in the three file formats: a JSON list, JSON lines with time segments, and
    a parquet shard holding its audio bytes, as a Hugging Face export does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "mucue"
    (root / "audio").mkdir(parents=True)
    for name in ("song22k.flac", "song44k.wav"):
        shutil.copy(audio_dir / name, root / "audio" / name)
    gtzan = [{"question": "What is the genre of this music?", "choices_text": CHOICES, "correct_choice": "B",
              "audio": {"path": "audio/song22k.flac"}, "time_seg": None},
             {"question": "Which genre fits best?", "choices_text": CHOICES, "correct_choice": "(C)",
              "audio": {"path": "audio/song44k.wav"}, "time_seg": []}]
    (root / "gtzan.json").write_text(json.dumps(gtzan))
    segd = [{"question": "What is the function of this segment?", "choices_text": "A. intro\nB. verse\nC. outro",
             "answer": "A", "audio": "audio/song44k.wav", "time_seg": [0.0, 3.0]},
            {"question": "What is the function of this segment?", "choices_text": "A. intro\nB. verse\nC. outro",
             "answer": "C", "audio": "audio/song44k.wav", "time_seg": [4.0, 7.0]}]
    (root / "salami_segd.jsonl").write_text("\n".join(json.dumps(r) for r in segd) + "\n")
    mood = [{"question": "What is the mood?", "choices_text": "(A) happy (B) sad", "correct_choice": "B",
             "audio": {"bytes": (audio_dir / "song22k.flac").read_bytes(), "path": "x.flac"}, "time_seg": None}]
    pq.write_table(pa.Table.from_pylist(mood), root / "mtg_mood-00000-of-00001.parquet")
    return root


def test_items_of_every_format(mucue, tmp_path):
    items = evaluate.load_items(mucue, audio_dir=tmp_path / "extracted")
    assert [it.key for it in items] == ["gtzan/0", "gtzan/1", "mtg_mood/0", "salami_segd/0", "salami_segd/1"]
    assert items[0].audio == str(mucue / "audio" / "song22k.flac") and items[0].segs is None
    assert items[3].segs == (0.0, 3.0) and items[4].correct == "C"
    assert (tmp_path / "extracted" / "mtg_mood-0.flac").read_bytes() == (mucue / "audio" / "song22k.flac").read_bytes()
    assert [it.key for it in evaluate.load_items(mucue, tasks=["gtzan"], limit=1)] == ["gtzan/0"]


def test_the_prompt_and_settings_are_the_papers(capsys, mucue, tiny_q4, tmp_path, monkeypatch):
    seen = []
    real = Pipeline.ask

    def spy(self, audios, question, request=None):
        seen.append((question, audios[0].segs, request.max_tokens, request.sampling.temperature))
        return real(self, audios, question, request)
    monkeypatch.setattr(Pipeline, "ask", spy)
    code, out, err = run_cli(capsys, "eval", str(mucue), "-m", str(tiny_q4), "--out", str(tmp_path / "r.jsonl"),
                             "--task", "gtzan", "--task", "salami_segd", "-q")
    assert code == 0, err
    assert seen[0] == ("Choose the correct option for the question based on the audio. What is the genre of this "
                       "music? " + CHOICES, None, 64, 0.0)
    assert seen[2][1] == (0.0, 3.0) and seen[3][1] == (4.0, 7.0)
    assert "| gtzan | 2 |" in out and "| salami_segd | 2 |" in out and "average over tasks" in out


def test_resume_answers_only_what_is_missing(capsys, mucue, tiny_q4, tmp_path):
    out = tmp_path / "r.jsonl"
    args = ("eval", str(mucue), "-m", str(tiny_q4), "--out", str(out), "--limit", "1")
    code, first, err = run_cli(capsys, *args)
    assert code == 0 and "answered 3, skipped 0" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["item"] for r in records] == ["gtzan/0", "mtg_mood/0", "salami_segd/0"]
    assert all(r["answer"] is not None and r["error"] is None for r in records)
    code, again, err = run_cli(capsys, *args)
    assert code == 0 and "answered 0, skipped 3" in err and again == first
    out.write_text("".join(line + "\n" for line in out.read_text().splitlines()[:2]))  # lose the last answer
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "answered 1, skipped 2" in err
    assert [json.loads(line)["item"] for line in out.read_text().splitlines()][-1] == "salami_segd/0"


def test_compare_prints_both_tables_and_the_differences(capsys, mucue, tiny_q4, tiny_f32, tmp_path, monkeypatch):
    import mufun_local.batch.evaluate as ev
    # Random weights rarely give a letter; make the two models' letters differ on one item.
    monkeypatch.setattr(ev, "extract_letter", lambda answer, choices: "A" if len(answer) % 2 else "B")
    code, out, err = run_cli(capsys, "eval", str(mucue), "-m", str(tiny_q4), "--compare", str(tiny_f32),
                             "--out", str(tmp_path / "r.jsonl"), "--task", "gtzan", "-q")
    assert code == 0, err
    assert f"| task | items | {tiny_q4.name} accuracy % | {tiny_f32.name} accuracy % |" in out
    assert (tmp_path / "r.compare.jsonl").is_file()
    a = evaluate.latest([json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()])
    b = evaluate.latest([json.loads(x) for x in (tmp_path / "r.compare.jsonl").read_text().splitlines()])
    diff = evaluate.differing(a, b)
    assert f"{len(diff)} item(s) answered differently" in out
    for key, x, y, _ in diff:
        assert f"  {key}: {x} vs {y}" in out


@pytest.mark.parametrize("answer,letter", [
    ("B", "B"), ("(C) classical", "C"), ("B. jazz", "B"), ("The answer is D.", "D"), ("option a", "A"),
    ("It sounds like classical music.", "C"), ("I think (A).", "A"), ("A jazz tune, walking bass.", "B"),
    ("rock or jazz, hard to say", None), ("Nothing fits.", None), ("", None),
])
def test_letters_are_read_by_rules(answer, letter):
    assert evaluate.extract_letter(answer, CHOICES) == letter


def test_choice_formats_and_keys():
    assert evaluate.parse_choices("A. intro\nB. verse\nC. outro") == {"A": "intro", "B": "verse", "C": "outro"}
    assert evaluate.parse_choices(CHOICES)["D"] == "hip hop"
    assert [evaluate.correct_letter(c) for c in ("B", "(C)", "D. rock")] == ["B", "C", "D"]


def test_the_table_averages_over_tasks_as_mucue_does():
    recs = {f"t1/{i}": {"task": "t1", "ok": i < 3, "error": None} for i in range(4)}       # 75 %
    recs.update({"t2/0": {"task": "t2", "ok": False, "error": None},                     # 0 %
                 "t2/1": {"task": "t2", "ok": False, "error": "bad audio"}})
    assert evaluate.accuracy(recs) == [("t1", 4, 3, 0), ("t2", 1, 0, 1)]
    table = evaluate.format_tables([("m", recs)])
    assert "| t1 | 4 | 75.0 |" in table and "| t2 | 2 | 0.0 (1 failed) |" in table
    assert "**37.5**" in table and "| all items | 6 | 60.0 |" in table


def test_bad_sets_are_one_line(capsys, tmp_path, tiny_q4):
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "nope"), "-m", str(tiny_q4), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "no such file or folder")
    (tmp_path / "t.json").write_text('[{"question": "q"}]')
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "t.json"), "-m", str(tiny_q4), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "item 0 has no 'choices_text'")
    (tmp_path / "t.json").write_text("{not json")
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "t.json"), "-m", str(tiny_q4), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "not a readable item list")
    (tmp_path / "song.wav").write_bytes(b"RIFF")
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "song.wav"), "-m", str(tiny_q4), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "not a .json, .jsonl or .parquet item file")


def test_a_run_where_every_item_failed_exits_non_zero(capsys, tmp_path, tiny_q4):
    (tmp_path / "bad.flac").write_bytes(b"fLaC" + bytes(2000))
    (tmp_path / "t.json").write_text(json.dumps([{"question": "q", "choices_text": "(A) a (B) b",
                                                  "correct_choice": "A", "audio": "bad.flac"}]))
    code, out, err = run_cli(capsys, "eval", str(tmp_path / "t.json"), "-m", str(tiny_q4), "--out",
                             str(tmp_path / "r.jsonl"), "-q")
    assert code == 1 and "every item failed" in err and "Traceback" not in err
    assert "| **average over tasks** | | — |" in out and "(1 failed)" in out
