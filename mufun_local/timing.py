"""Per-stage wall time and peak memory of a request (`--json`'s timings and peak_rss_mb)."""
from __future__ import annotations

import time
from contextlib import contextmanager


class Timer:
    """Adds the wall time of each `with timer("stage"):` block to timings["stage"], and the
    process's peak RSS so far (MB) at the end of it to peaks["stage"] (where it rises is the
    stage that needed the memory)."""

    def __init__(self, timings: dict[str, float], peaks: dict[str, float] | None = None):
        self.timings = timings
        self.peaks = peaks if peaks is not None else {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            self.peaks[name] = peak_rss_mb()


def peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
