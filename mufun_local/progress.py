"""One status line on a terminal's stderr while a request works: decoding, encoder windows,
prefill positions; cleared when the answer starts. At the real size a 3-minute song is
minutes of work before the first word, and silence there looks like a hang."""
from __future__ import annotations

import sys

LABELS = {
    "decode": lambda d, t: f"decoding audio {d + 1}/{t}",
    "encoder": lambda d, t: f"encoder: {d}/{t} windows of 30 s",
    "prefill": lambda d, t: f"reading the prompt: {d}/{t} positions",
}


class StatusLine:
    """A `Pipeline.progress` callback; does nothing unless `stream` is a terminal."""

    def __init__(self, stream=None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.shown = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage not in LABELS:  # the answer starts: make room for it
            self.clear()
            return
        self.stream.write("\r\x1b[K" + LABELS[stage](done, total) + " ...")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
