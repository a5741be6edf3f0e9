"""Music-like test signals and files in every format, made by the tests (nothing downloaded)."""
from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np


def chord(seconds: float, rate: int, freqs=(220.0, 277.18, 329.63), seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) / len(freqs)
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t) ** 2
    return (0.5 * x * env).astype(np.float32)


def drums(seconds: float, rate: int, bpm: float = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    x = np.zeros(n, np.float32)
    beat = int(rate * 60 / bpm)
    hit = np.exp(-np.arange(int(0.15 * rate)) / (0.02 * rate))
    for k, start in enumerate(range(0, n, beat)):
        seg = min(len(hit), n - start)
        if k % 2 == 0:  # kick: decaying low sine
            t = np.arange(seg) / rate
            x[start:start + seg] += 0.9 * hit[:seg] * np.sin(2 * np.pi * 60 * t)
        else:           # snare: decaying noise
            x[start:start + seg] += 0.5 * hit[:seg] * rng.standard_normal(seg)
    return x


def noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def clipped(seconds: float, rate: int) -> np.ndarray:
    return np.clip(3 * chord(seconds, rate) + drums(seconds, rate), -1, 1).astype(np.float32)


def music(seconds: float, rate: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """[n, channels]: a chord plus drums, channels slightly different."""
    base = 0.6 * chord(seconds, rate, seed=seed) + 0.4 * drums(seconds, rate, seed=seed)
    cols = [np.roll(base, 37 * c) * (1.0 - 0.1 * c) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


_CODECS = {".wav": "pcm_s16le", ".flac": "flac", ".ogg": "vorbis", ".mp3": "libmp3lame",
           ".opus": "libopus", ".m4a": "aac"}
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def write_audio(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Encode [n, channels] float samples with PyAV in the format the suffix names."""
    import av

    path = Path(path)
    samples = np.atleast_2d(samples.T).T if samples.ndim == 1 else samples
    if path.suffix == ".opus" and rate != 48000:
        raise ValueError("opus is 48 kHz")
    with av.open(str(path), "w") as out:
        stream = out.add_stream(_CODECS[path.suffix], rate=rate)
        stream.layout = _LAYOUTS[samples.shape[1]]
        if path.suffix == ".ogg":
            stream.codec_context.options = {"strict": "experimental"}  # ffmpeg's own vorbis encoder
        frame_size = 1152 if path.suffix == ".mp3" else 1024
        for s in range(0, len(samples), frame_size):
            block = np.ascontiguousarray(samples[s:s + frame_size].T, dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=stream.layout.name)
            frame.sample_rate = rate
            frame.pts = s
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):  # PyAV converts to the codec's sample format
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def have_ffmpeg_cli() -> bool:
    return shutil.which("ffmpeg") is not None
