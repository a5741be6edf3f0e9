"""Log-mel features [windows, 128, 3000], equal to WhisperFeatureExtractor(feature_size=128).

The same steps as transformers' extractor: pad each window with zeros to 30 s, centred
STFT (reflect padding, periodic Hann window of 400, hop 160), power spectrum without the
last frame, Slaney mel filters (0-8 kHz), log10 clamped at 1e-10,
floor at (max - 8) per window, then (x + 4) / 4. numpy only, batched over windows.
The FFT runs in float64 (scipy's is faster than numpy's float32 one, and exact); the mel
projection and the log run in float32, as the extractor's torch path does.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from .decode import WINDOW_SAMPLES

N_FFT = 400
HOP = 160
N_FRAMES = WINDOW_SAMPLES // HOP  # 3000
FFT_CHUNK = 500                   # frames per FFT call (its float64 temporaries fit in cache)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = 128) -> np.ndarray:
    """[n_mels, 201] Slaney filters. The converter stores them in the model
    (encoder/frontend.npz) so the runtime does not pay librosa's ~1 s import."""
    from ..format.encoder_dir import slaney_mel_filters
    return slaney_mel_filters(n_mels)


@lru_cache(maxsize=1)
def _hann64() -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)


def log_mel(windows: list[np.ndarray], filters: np.ndarray | None = None) -> np.ndarray:
    """float32 [len(windows), n_mels, 3000] for windows of <= 480,000 samples at 16 kHz."""
    filters = mel_filters(128) if filters is None else np.asarray(filters, dtype=np.float32)
    n_mels = filters.shape[0]
    out = np.empty((len(windows), n_mels, N_FRAMES), dtype=np.float32)
    padded = np.zeros(WINDOW_SAMPLES + N_FFT, dtype=np.float32)  # reused for every window
    power = np.empty((N_FRAMES, N_FFT // 2 + 1), dtype=np.float32)  # [3000, 201], likewise
    half = N_FFT // 2
    for i, w in enumerate(windows):
        if len(w) > WINDOW_SAMPLES:
            raise ValueError("a window holds at most 30 s of 16 kHz audio")
        body = padded[half:half + WINDOW_SAMPLES]
        body[:len(w)] = w
        body[len(w):] = 0.0
        # reflect padding of the centred STFT (without repeating the edge sample)
        padded[:half] = body[half:0:-1]
        padded[half + WINDOW_SAMPLES:] = body[-2:-half - 2:-1]
        frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:N_FRAMES]
        # float64 FFT: scipy's is faster than numpy's float32 one, and exact. In chunks of
        # frames, so the float64 temporaries stay in cache (half the time of one big FFT).
        for c in range(0, N_FRAMES, FFT_CHUNK):
            spec = scipy.fft.rfft(frames[c:c + FFT_CHUNK] * _hann64(), axis=-1)
            np.add(spec.real ** 2, spec.imag ** 2, out=power[c:c + FFT_CHUNK], casting="same_kind")
        mel = filters @ power.T                           # [n_mels, 3000]
        logm = np.log10(np.maximum(mel, 1e-10))
        logm = np.maximum(logm, logm.max() - 8.0)
        out[i] = (logm + 4.0) / 4.0
    return out
