"""One status line on a terminal's stderr while a request works: decoding, encoder windows,
prefill positions, terms ranked; cleared when the answer starts. At the real size a 3-minute song is
minutes of work before the first word, and silence there looks like a hang."""
from __future__ import annotations

import sys

LABELS = {
    "decode": lambda d, t: f"decoding audio {d + 1}/{t}",
    "encoder": lambda d, t: f"encoder: {d}/{t} windows of 30 s",
    "prefill": lambda d, t: f"reading the prompt: {d}/{t} positions",
    "rank": lambda d, t: f"ranking: {d}/{t} terms",
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


class LogBar:
    """A progress bar's stand-in when stderr is not a terminal (a log file, a pipe): no
    frames, a line when a tenth more is done (long stages only) and one when the stage ends,
    with its time. Takes what the CLI asks of tqdm: update, n/total, refresh,
    set_postfix_str, close."""

    def __init__(self, desc: str = "", total: int = 0, unit: str = "it", stream=None, every_s: float = 30.0):
        import time
        self.desc, self.total, self.unit, self.n = desc, total, unit, 0
        self.stream = stream or sys.stderr
        self._clock = time.monotonic
        self._t0 = self._last = self._clock()
        self._every_s, self._tenth = every_s, 0
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def refresh(self) -> None:
        if not self.total:
            return
        tenth = int(10 * self.n / self.total)
        if tenth > self._tenth and self.n < self.total and self._clock() - self._last >= self._every_s:
            self._line(f"{self.n}/{self.total} {self.unit}")
            self._last = self._clock()
        self._tenth = max(self._tenth, tenth)

    def set_postfix_str(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        done = f"{self.n}/{self.total} {self.unit}" if self.total and self.n < self.total else "done"
        self._line(f"{done} in {self._clock() - self._t0:.1f} s")

    def _line(self, what: str) -> None:
        self.stream.write(f"{self.desc + ': ' if self.desc else ''}{what}\n")
        self.stream.flush()


def bar(desc: str = "", total: int = 0, unit: str = "it", quiet: bool = False, stream=None, **tqdm_args):
    """tqdm on a terminal; LogBar in a log; nothing when quiet."""
    from tqdm import tqdm
    stream = stream or sys.stderr
    if quiet or stream.isatty():
        return tqdm(desc=desc or None, total=total, unit=unit, file=stream, disable=quiet, **tqdm_args)
    return LogBar(desc.strip(), total, unit, stream)
