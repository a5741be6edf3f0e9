"""Progress on long work: the stages a request reports, and the terminal status line."""
from __future__ import annotations

import io

from mufun_local.modeldir import ModelDir
from mufun_local.pipeline import AudioInput, Options, Pipeline, Request
from mufun_local.progress import StatusLine


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_stages_in_order_with_counts(tiny_q4, audio_dir):
    events = []
    pipe = Pipeline(ModelDir.open(tiny_q4), Options(device="cpu", n_batch=128))
    res = pipe.ask([AudioInput(str(audio_dir / "long48k.flac"))], "Genre?",
                   Request(3, progress=lambda *e: events.append(e))).finish()
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
