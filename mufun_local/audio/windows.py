"""File -> log-mel windows, with decoding and resampling overlapped with the log-mels.

A worker thread runs `audio.iter_windows` (FFmpeg / libsndfile decoding and the resampler's
GEMM release the GIL) while this thread turns each finished 30 s window into its log-mel,
so the two stages share the cores instead of running one after the other. At most two
windows wait between them; the 16 kHz samples are dropped as soon as their log-mel exists.

Meanwhile numpy's BLAS runs one thread: two stages each asking for every core would spin
against each other (slower than no overlap), and OpenBLAS rounds float32 products
differently with another thread count, so this also makes log-mels independent of it.
"""
from __future__ import annotations

import functools
import queue
import threading
from contextlib import nullcontext

import numpy as np

from . import decode as audio, features

_END = object()


@functools.lru_cache(maxsize=1)
def _blas():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def one_blas_thread():
    return _blas().limit(limits=1, user_api="blas")


def load_log_mels(source, segs: tuple[float, float] | None, filters: np.ndarray,
                  max_windows: int | None = None, timer=None, name: str | None = None) -> tuple[list[np.ndarray], float]:
    """Log-mels [n_mels, 3000] of each window of `source` (audio.Source; `name` is what
    messages call it), and the seconds of audio they hold.
    Raises what `audio.iter_windows` raises (AudioError, TooLong). `timer(name)` (optional)
    times the waits for decoding as "decode" and the log-mel work as "features"."""
    timer = timer or (lambda name: nullcontext())
    handoff: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for window in audio.iter_windows(source, segs, max_windows, name):
                if not put(window):
                    return
            put(_END)
        except BaseException as exc:  # handed to the caller's thread, raised there
            put(exc)

    mels, samples = [], 0
    with one_blas_thread():
        worker = threading.Thread(target=produce, name="mufun-decode", daemon=True)
        worker.start()
        try:
            while True:
                with timer("decode"):
                    item = handoff.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                samples += len(item)
                with timer("features"):
                    mels.append(features.log_mel([item], filters)[0])
        finally:
            stop.set()
            worker.join()
    return mels, samples / audio.SAMPLE_RATE
