"""Size-bounded on-disk caches (embeddings, prefix states): entries written atomically
(files.write_atomic), recency, eviction."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO, Callable

from .files import write_atomic


def put_or_skip(path: Path, write: Callable[[BinaryIO], object], what: str) -> bool:
    """write_atomic for a cache entry: a cache that cannot be written (a full disk, a
    read-only folder) is a warning and a miss next time, never a failed request."""
    try:
        write_atomic(path, write)
        touch(path)
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
