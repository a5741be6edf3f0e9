"""Audio front end: any file -> float32 mono at the native rate -> segs -> 16 kHz -> 30 s windows.

Why PyAV: the original MuFun decodes with the ffmpeg CLI (`ffmpeg -ac 1 -f f32le` at the
file's native rate, via transformers' ``ffmpeg_read``). ffmpeg's mono downmix is not the
channel mean ((L+R)/sqrt(2) for stereo, its own matrix for 5.1), and PyAV's
``AudioResampler(format="flt", layout="mono", rate=native)`` runs the same libswresample
code, so its samples equal the CLI's; PyAV also bundles FFmpeg, so users install nothing
else, and unlike the original, opus and m4a work.

Plain PCM files (16-bit or float WAV/FLAC, mono or stereo) are read with soundfile, 4x
faster than a decode through FFmpeg: the conversion to float (x / 32768) and ffmpeg's
stereo downmix (L * c + R * c with c = float32(1/sqrt(2))) are reproduced bit for bit.

Why our own resampler: the original uses ``torchaudio.functional.resample`` (windowed sinc,
Hann, 6 zero crossings, rolloff 0.99). That kernel is fixed and polyphase, so it is a few
lines of numpy; librosa/soxr resampling changes the embeddings by ~10 %.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import AudioError

log = logging.getLogger("mufun_local")

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 30 * SAMPLE_RATE   # one encoder window
MIN_PIECE_SAMPLES = SAMPLE_RATE // 2  # the original keeps a later piece only above this


@dataclass(frozen=True)
class Decoded:
    samples: np.ndarray  # float32 mono at `rate`
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


def check_file(path: str) -> None:
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: permission denied")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: file is empty")


_SQRT1_2 = np.float32(np.sqrt(0.5))


def _read_plain_pcm(path: str) -> Decoded | None:
    """The soundfile fast path; None when the file is not plain 16-bit/float PCM."""
    import soundfile as sf

    try:
        info = sf.info(path)
        if info.format not in ("WAV", "WAVEX", "FLAC") or info.channels > 2 or info.frames <= 0:
            return None
        if info.subtype == "PCM_16":
            x = sf.read(path, dtype="int16", always_2d=True)[0].astype(np.float32)
            x *= np.float32(1.0 / 32768)
        elif info.subtype == "FLOAT" and info.format != "FLAC":
            x = sf.read(path, dtype="float32", always_2d=True)[0]
        else:
            return None
    except (RuntimeError, sf.LibsndfileError, ValueError, OSError):
        return None  # let FFmpeg decide, and say what is wrong
    if x.shape[1] == 1:
        return Decoded(np.ascontiguousarray(x[:, 0]), int(info.samplerate))
    mono = x[:, 0] * _SQRT1_2
    mono += x[:, 1] * _SQRT1_2
    return Decoded(mono, int(info.samplerate))


def decode(path: str) -> Decoded:
    """Decode the first audio stream to float32 mono at its native rate, as `ffmpeg -ac 1`."""
    import av

    check_file(path)
    fast = _read_plain_pcm(path)
    if fast is not None:
        return fast
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({_reason(exc)})") from None
    with container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise AudioError(f"{path}: contains no audio stream")
        stream = streams[0]
        rate = stream.rate or stream.codec_context.sample_rate
        if not rate:
            raise AudioError(f"{path}: the audio stream has no sample rate")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        pieces: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frame.pts = None  # the resampler only needs the samples, not the timestamps
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, ValueError) as exc:
            if not pieces:
                raise AudioError(f"{path}: cannot decode audio ({_reason(exc)})") from None
            got = sum(map(len, pieces)) / rate
            log.warning("%s: decoding stopped after %.1f s (%s); using what was decoded",
                        path, got, _reason(exc))
    samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    if samples.size == 0:
        raise AudioError(f"{path}: contains no audio samples")
    return Decoded(samples, int(rate))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def apply_segs(audio: Decoded, segs: tuple[float, float] | None, name: str = "audio") -> Decoded:
    """Cut (start, end) seconds at the native rate, as the original does before resampling."""
    if segs is None:
        return audio
    start, end = float(segs[0]), float(segs[1])
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
        raise AudioError(f"{name}: segs {start:g}:{end:g} must satisfy 0 <= start < end")
    if start >= audio.seconds:
        raise AudioError(f"{name}: segs start {start:g} s is beyond the end of the audio "
                         f"({audio.seconds:.2f} s)")
    cut = audio.samples[int(start * audio.rate):int(end * audio.rate)]
    if cut.size == 0:
        raise AudioError(f"{name}: segs {start:g}:{end:g} select no samples")
    return Decoded(cut, audio.rate)


# ----------------------------------------------------------------------------- resampling


@lru_cache(maxsize=16)
def sinc_kernel(orig: int, new: int, lowpass_filter_width: int = 6,
                rolloff: float = 0.99) -> tuple[np.ndarray, int]:
    """torchaudio's Hann-windowed sinc kernel for reduced rates orig->new, as float32 [new, K]."""
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    idx = np.arange(-width, width + orig, dtype=np.float32)[None, :] / np.float32(orig)
    t = np.arange(0, -new, -1, dtype=np.float32)[:, None] / np.float32(new) + idx
    t *= np.float32(base_freq)
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width).astype(np.float32)
    window = np.cos(t * np.float32(math.pi / lowpass_filter_width / 2)) ** 2
    t *= np.float32(math.pi)
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, np.float32(1.0), np.sin(t) / t)
    kernel *= window * np.float32(base_freq / orig)
    return np.ascontiguousarray(kernel, dtype=np.float32), width


def resample(x: np.ndarray, orig_rate: int, new_rate: int = SAMPLE_RATE,
             block_frames: int = 1 << 14) -> np.ndarray:
    """``torchaudio.functional.resample(x, orig_rate, new_rate)`` in numpy, block by block."""
    if orig_rate == new_rate:
        return np.asarray(x, dtype=np.float32)
    g = math.gcd(int(orig_rate), int(new_rate))
    o, n = int(orig_rate) // g, int(new_rate) // g
    kernel, width = sinc_kernel(o, n)
    taps = kernel.shape[1]
    length = len(x)
    target = math.ceil(n * length / o)
    padded = np.zeros(length + 2 * width + o, dtype=np.float32)
    padded[width:width + length] = x
    n_frames = (len(padded) - taps) // o + 1
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, taps), strides=(o * padded.strides[0], padded.strides[0]),
        writeable=False)
    out = np.empty((n_frames, n), dtype=np.float32)
    kt = kernel.T.copy()
    for s in range(0, n_frames, block_frames):
        np.matmul(frames[s:s + block_frames], kt, out=out[s:s + block_frames])
    return out.reshape(-1)[:target]


# ----------------------------------------------------------------------------- windows


def split_windows(audio16k: np.ndarray) -> list[np.ndarray]:
    """The original's rule: <= 30 s is one window however short; longer audio is cut every
    30 s and a piece is kept only if it has more than 8,000 samples. Views, not copies."""
    if len(audio16k) <= WINDOW_SAMPLES:
        return [audio16k]
    return [audio16k[i:i + WINDOW_SAMPLES] for i in range(0, len(audio16k), WINDOW_SAMPLES)
            if len(audio16k[i:i + WINDOW_SAMPLES]) > MIN_PIECE_SAMPLES]


def load_windows(path: str, segs: tuple[float, float] | None = None) -> list[np.ndarray]:
    """decode -> segs -> 16 kHz -> 30 s windows: the original ``load_audio_single``."""
    audio = apply_segs(decode(path), segs, name=path)
    return split_windows(resample(audio.samples, audio.rate))


def parse_segs(text: str) -> tuple[float, float]:
    """'START:END' in seconds (``12.5:42``) -> (12.5, 42.0)."""
    try:
        start, end = (float(v) for v in text.split(":"))
    except ValueError:
        raise AudioError(f"segs {text!r} must look like START:END in seconds, e.g. 30:60") from None
    if not (0 <= start < end):
        raise AudioError(f"segs {text!r} must satisfy 0 <= START < END")
    return start, end
