"""Free space, said before long work and named when a write fails: a conversion refuses to
start when its output's file system cannot hold what it will write, and a writer's failure
on a full disk reads as one line naming the file system, whatever the library that wrote."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

from .errors import ModelError, first_line

# Below this much free space, a failed write is taken as the disk being full (a library's
# own error then often says only "iostream error").
NEARLY_FULL = 64 * 1024 * 1024


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def require(path: Path, need: int, what: str) -> None:
    """Refuse in one line, with both sizes, when `path`'s file system has less than `need` free."""
    free = free_bytes(path)
    if free < need:
        raise ModelError(f"{path}: {_size(free)} free on its file system, {what} needs about {_size(need)}; "
                         f"free some space or choose another place")


def full_disk_error(exc: BaseException, path: Path) -> ModelError | None:
    """A one-line error when `exc` comes from a full (or over-quota) file system under `path`,
    else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ModelError(f"{path}: no space left on its file system ({first_line(exc.strerror or exc)})")
    try:
        free = free_bytes(path)
    except OSError:
        return None
    if free < NEARLY_FULL and isinstance(exc, Exception):
        return ModelError(f"{path}: its file system is full ({_size(free)} free): {first_line(exc)}")
    return None
