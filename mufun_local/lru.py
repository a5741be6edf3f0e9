"""Size-bounded on-disk caches (embeddings, prefix states): atomic writes, recency, eviction."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(fh)` into a temporary sibling, renamed to `path` when complete: a reader sees
    the whole entry or none, and an error (or Ctrl-C) leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not exc.filename and exc.errno:  # a write error names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    touch(path)


def put_or_skip(path: Path, write: Callable[[BinaryIO], object], what: str) -> bool:
    """write_atomic for a cache entry: a cache that cannot be written (a full disk, a
    read-only folder) is a warning and a miss next time, never a failed request."""
    try:
        write_atomic(path, write)
        return True
    except OSError as exc:
        from .errors import first_line
        from .logs import log
        log.warning("%s: cannot write %s (%s); going on without it", what, path.parent, first_line(exc.strerror or exc))
        return False


def touch(path: Path) -> None:
    """Mark `path` as just used, at the clock's resolution (file times may be coarser)."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:
        pass


def evict(root: Path, pattern: str, limit: int) -> None:
    """Remove the least recently used files matching `pattern` under `root` until the rest
    fit in `limit` bytes. Files that vanish meanwhile (another process) are skipped."""
    files = []
    for f in root.glob(pattern):
        try:
            st = f.stat()
        except OSError:
            continue
        files.append((st.st_mtime_ns, st.st_size, f))
    total = sum(s for _, s, _ in files)
    for _, size, f in sorted(files):
        if total <= limit:
            break
        f.unlink(missing_ok=True)
        total -= size
