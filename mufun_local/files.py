"""Writing a file so that nobody sees it half-written: the one atomic writer (the caches'
entries, batch's tables, `embed`'s output, the encoder measurement, chat's /save)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(fh)` into a temporary sibling, renamed to `path` when complete: a reader sees
    the whole file or the one before, and an error (or Ctrl-C) leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not exc.filename and exc.errno:  # a write error names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))
