"""Size-bounded on-disk caches (embeddings, prefix states): recency and eviction."""
from __future__ import annotations

import os
import time
from pathlib import Path


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
