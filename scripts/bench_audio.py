#!/usr/bin/env python3
"""Decoding and log-mel speed: decode + resample + log-mel of one file, ours vs the original's path.

The original's path is ffmpeg_read (the ffmpeg CLI) + torchaudio's resample (the
reference's faithful copy) + WhisperFeatureExtractor, one window at a time; ours is
`frontend.load_log_mels`, what `ask` runs. Both run here, one after the other, on the same
file; the output is seconds and the ratio.

    python scripts/bench_audio.py [--seconds 180] [--rate 44100] [--file SONG]

Needs the ffmpeg CLI and the `reference` extra.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_song(path: Path, seconds: float, rate: int, seed: int = 0) -> Path:
    """A stereo 'song' (mufun_local.synthetic.song: chords, a beat, some noise)."""
    from mufun_local.synthetic import song
    return song(path, seconds, rate, seed)


def ours(path: str):
    """What `ask` runs: decode + resample in a worker thread, overlapped with the log-mels."""
    from mufun_local.audio import features
    from mufun_local.audio.windows import load_log_mels
    return np.stack(load_log_mels(path, None, _filters(features))[0])


def _filters(features, cache={}):
    if "f" not in cache:  # the runtime reads them from the model (librosa is not timed)
        cache["f"] = features.mel_filters(128)
    return cache["f"]


def original(path: str):
    import mufun_reference as reference
    return reference.log_mel(reference.load_audio_single(path)).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--rate", type=int, default=44100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(2)
    path = args.file or str(make_song(Path(tempfile.mkdtemp()) / "song.wav", args.seconds, args.rate))
    results = {}
    for name, fn in (("original path", original), ("mufun-local", ours)):
        fn(path)  # warm-up: imports, filter banks
        best = min(_timed(fn, path) for _ in range(args.repeat))
        results[name] = best
    a, b = ours(path), original(path)
    print(f"\ndecode + resample + log-mel, {Path(path).name} ({args.seconds:.0f} s, {args.rate} Hz stereo)")
    print("| path | seconds | speed-up |")
    print("|---|---|---|")
    for name, sec in results.items():
        print(f"| {name} | {sec:.3f} | {results['original path'] / sec:.1f}x |")
    print(f"max |log-mel difference| = {np.abs(a - b).max():.2e} over {a.shape[0]} windows")
    return 0


def _timed(fn, path) -> float:
    t0 = time.perf_counter()
    fn(path)
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
