"""Progress on long work: the stages a request reports, and the terminal status line."""
from __future__ import annotations

import io

from mufun_local.format.model_dir import ModelDir
from mufun_local.pipeline import AudioInput, Options, Pipeline, Request
from mufun_local.progress import StatusLine


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_stages_in_order_with_counts(tiny_q4, audio_dir):
    events = []
    pipe = Pipeline(ModelDir.open(tiny_q4), Options(device="cpu", n_batch=128))
    res = pipe.ask([AudioInput(str(audio_dir / "long48k.flac"))], "Genre?",
                   Request(3, progress=lambda *e: events.append(e))).result()
    pipe.close()
    stages = [e[0] for e in events]
    assert stages[0] == "decode" and stages[-1] == "answer"
    enc = [e for e in events if e[0] == "encoder"]
    assert enc[0][1:] == (0, 2) and enc[-1][1:] == (2, 2)
    pre = [e for e in events if e[0] == "prefill"]
    total = res.prompt_tokens + res.audio_tokens
    assert all(t == total for _, _, t in pre) and pre[-1][1] == total
    assert [d for _, d, _ in pre] == sorted(d for _, d, _ in pre) and len(pre) >= 5   # 600 rows in batches of 128
    assert stages.index("answer") > max(i for i, s in enumerate(stages) if s == "prefill")


def test_status_line_only_on_a_terminal_and_cleared_for_the_answer():
    tty = FakeTTY()
    line = StatusLine(tty)
    line("encoder", 1, 4)
    line("prefill", 512, 1303)
    assert tty.getvalue().endswith("reading the prompt: 512/1303 positions ...")
    line("answer", 0, 32)
    assert tty.getvalue().endswith("\r\x1b[K")
    pipe = io.StringIO()
    quiet = StatusLine(pipe)
    quiet("encoder", 1, 4)
    quiet.clear()
    assert pipe.getvalue() == ""


def test_a_conversion_logged_to_a_file_is_a_few_readable_lines(tmp_path, tiny_ckpt, capfd):
    """Not on a terminal, no bar frames: one line per stage with its time."""
    from mufun_local.cli import main
    assert main(["convert", str(tiny_ckpt), str(tmp_path / "m"), "--quant", "f16"]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err and "%|" not in err
    lines = err.strip().splitlines()
    assert 3 <= len(lines) <= 12, lines
    assert any(line.startswith("encoder: done in ") and line.endswith(" s") for line in lines), lines


def test_log_bar_says_each_tenth_of_a_long_stage_and_its_end():
    import io
    from mufun_local.progress import LogBar
    out = io.StringIO()
    b = LogBar("batch", 20, "answer", out, every_s=0.0)
    for _ in range(20):
        b.update()
    b.close()
    b.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "batch: 2/20 answer" and len(lines) == 10 and lines[-1].startswith("batch: done in ")
    out = io.StringIO()
    b = LogBar("batch", 20, "answer", out)  # a short stage: only its end
    b.update(3)
    b.close()
    assert out.getvalue().startswith("batch: 3/20 answer in ")
