"""Decoding and resampling: any file -> float32 mono at the native rate -> segs -> 16 kHz -> 30 s windows.

Why PyAV: the original MuFun decodes with the ffmpeg CLI (`ffmpeg -ac 1 -f f32le` at the
file's native rate, via transformers' ``ffmpeg_read``). ffmpeg's mono downmix is not the
channel mean ((L+R)/sqrt(2) for stereo, its own matrix for 5.1), and PyAV's
``AudioResampler(format="flt", layout="mono", rate=native)`` runs the same libswresample
code, so its samples equal the CLI's; PyAV also bundles FFmpeg, so users install nothing
else, and unlike the original, opus and m4a work.

Plain PCM files (16-bit or float WAV/FLAC, mono or stereo) are read with soundfile, 4x
faster than a decode through FFmpeg: the conversion to float (x / 32768) and ffmpeg's
stereo downmix (L * c + R * c with c = float32(1/sqrt(2))) are reproduced bit for bit.

A source is a path, the file's bytes, a binary file object (read once, into memory) or a
float array of mono samples at 16 kHz (as faster-whisper's `decode_audio` returns and its
`transcribe` takes): the server decodes uploads from memory, without temporary files.

Why our own resampler: the original uses ``torchaudio.functional.resample`` (windowed sinc,
Hann, 6 zero crossings, rolloff 0.99). That kernel is fixed and polyphase, so it is a few
lines of numpy; librosa/soxr resampling changes the embeddings by ~10 %.
"""
from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO, Iterator, Union

import numpy as np

from ..errors import AudioError, first_line

log = logging.getLogger("mufun_local")

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE   # one encoder window
MIN_PIECE_SAMPLES = SAMPLE_RATE // 2  # the original keeps a later piece only above this


@dataclass(frozen=True)
class Decoded:
    samples: np.ndarray  # float32 mono at `rate`
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray]


def describe(source: Source) -> str:
    """What messages call a source: its path, else what it is."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "<samples>" if isinstance(source, np.ndarray) else "<audio data>"


def in_memory(source: Source) -> Source:
    """A path or an array as it is; bytes-like data and file objects as bytes (a file object
    is read once here, so a source can be read again: hashed, then decoded)."""
    if isinstance(source, (str, os.PathLike, np.ndarray, bytes)):
        return source
    if isinstance(source, (bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise AudioError("an audio file object must be opened in binary mode")
        return bytes(data)
    raise AudioError(f"unsupported audio source {type(source).__name__}: give a path, bytes, a binary file "
                     f"or a float array of 16 kHz samples")


def check_source(source: Source, name: str | None = None) -> None:
    """The cheap checks before any work: a path exists and is a non-empty readable file;
    data is not empty; an array is 1-D float samples."""
    name = name or describe(source)
    if isinstance(source, (str, os.PathLike)):
        check_file(os.fspath(source))
    elif isinstance(source, np.ndarray):
        if source.ndim != 1 or source.dtype.kind != "f":
            raise AudioError(f"{name}: samples must be a 1-D float array (mono, 16 kHz), got "
                             f"{source.ndim}-D {source.dtype}")
        if source.size == 0:
            raise AudioError(f"{name}: contains no audio samples")
    elif len(source) == 0:
        raise AudioError(f"{name}: file is empty")


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
BLOCK_FRAMES = 1 << 16  # soundfile block size (samples per channel)


@dataclass
class Stream:
    """An opened audio source: its native rate and a one-pass iterator of float32 mono blocks."""

    path: str  # what messages call it (describe)
    rate: int
    blocks: Iterator[np.ndarray]
    seconds: float | None = None  # the length the container declares (exact for PCM, else an estimate)


def _downmix(x: np.ndarray) -> np.ndarray:
    if x.shape[1] == 1:
        return np.ascontiguousarray(x[:, 0])
    mono = x[:, 0] * _SQRT1_2
    mono += x[:, 1] * _SQRT1_2
    return mono


def _opener(source: str | bytes):
    """A function giving something soundfile and PyAV read: the path, or a fresh reader of the bytes."""
    return (lambda: source) if isinstance(source, str) else (lambda: io.BytesIO(source))


def _looks_plain(source: str | bytes) -> bool:
    """WAV or FLAC by name or by magic (libsndfile would also try mp3/ogg, and its mpg123
    prints to stderr)."""
    if isinstance(source, str):
        return os.path.splitext(source)[1].lower() in (".wav", ".wave", ".flac")
    return source[:4] in (b"RIFF", b"RF64", b"fLaC")


def _plain_pcm(source: str | bytes, path: str) -> Stream | None:
    """The soundfile fast path; None when the source is not plain 16-bit/float PCM."""
    import soundfile as sf

    if not _looks_plain(source):
        return None
    opener = _opener(source)
    try:
        info = sf.info(opener())
    except (RuntimeError, sf.LibsndfileError, ValueError, OSError):
        return None  # let FFmpeg decide, and say what is wrong
    if info.format not in ("WAV", "WAVEX", "FLAC") or info.channels > 2 or info.frames <= 0:
        return None
    if info.subtype == "PCM_16":
        dtype, scale = "int16", np.float32(1.0 / 32768)
    elif info.subtype == "FLOAT" and info.format != "FLAC":
        dtype, scale = "float32", None
    else:
        return None

    def blocks():
        got = 0
        try:
            for block in sf.blocks(opener(), blocksize=BLOCK_FRAMES, dtype=dtype, always_2d=True):
                x = block.astype(np.float32)
                if scale is not None:
                    x *= scale
                got += len(x)
                yield _downmix(x)
        except (RuntimeError, sf.LibsndfileError, ValueError) as exc:
            if not got:  # damaged before the first block: FFmpeg decodes what it can, or says why
                yield from _ffmpeg(source, path).blocks
                return
            log.warning("%s: decoding stopped after %.1f s (%s); using what was decoded",
                        path, got / info.samplerate, _reason(exc))
    return Stream(path, int(info.samplerate), blocks(), info.frames / info.samplerate)


def _ffmpeg(source: str | bytes, path: str) -> Stream:
    import av

    try:
        container = av.open(_opener(source)(), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({_reason(exc)})") from None
    streams = [s for s in container.streams if s.type == "audio"]
    if not streams:
        container.close()
        raise AudioError(f"{path}: contains no audio stream")
    stream = streams[0]
    rate = stream.rate or stream.codec_context.sample_rate
    if not rate:
        container.close()
        raise AudioError(f"{path}: the audio stream has no sample rate")

    def blocks():
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        got = 0
        with container:
            try:
                for frame in container.decode(stream):
                    frame.pts = None  # the resampler only needs the samples, not the timestamps
                    for out in resampler.resample(frame):
                        got += out.samples
                        yield out.to_ndarray().reshape(-1)
                for out in resampler.resample(None):
                    yield out.to_ndarray().reshape(-1)
            except (av.error.FFmpegError, ValueError) as exc:
                if not got:
                    raise AudioError(f"{path}: cannot decode audio ({_reason(exc)})") from None
                log.warning("%s: decoding stopped after %.1f s (%s); using what was decoded",
                            path, got / rate, _reason(exc))
    declared = container.duration / 1e6 if container.duration and container.duration > 0 else None
    return Stream(path, int(rate), blocks(), declared)


def open_audio(source: Source, name: str | None = None) -> Stream:
    """Open a source for one pass of float32 mono blocks at its native rate, as `ffmpeg -ac 1`;
    `name` is what messages call it (default: describe)."""
    name = name or describe(source)
    source = in_memory(source)
    check_source(source, name)
    if isinstance(source, np.ndarray):
        samples = np.ascontiguousarray(source, dtype=np.float32)
        return Stream(name, SAMPLE_RATE, iter([samples]), len(samples) / SAMPLE_RATE)
    if not isinstance(source, bytes):
        source = os.fspath(source)
    st = _plain_pcm(source, name) or _ffmpeg(source, name)
    check_rate(name, st.rate)
    return st


def middle(source: Source, seconds: float, name: str | None = None) -> tuple[float, float] | None:
    """segs for the middle `seconds` of a source, from the length its container declares (an
    estimate for compressed files); None when it is no longer than that, or declares nothing:
    then the whole of it."""
    st = open_audio(source, name)
    close = getattr(st.blocks, "close", None)
    if close is not None:
        close()
    if st.seconds is None or st.seconds <= seconds:
        return None
    start = (st.seconds - seconds) / 2
    return (round(start, 3), round(start + seconds, 3))


def decode(source: Source, name: str | None = None) -> Decoded:
    """The whole source as float32 mono at its native rate."""
    st = open_audio(source, name)
    pieces = list(st.blocks)
    samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    if samples.size == 0:
        raise AudioError(f"{st.path}: contains no audio samples")
    return Decoded(samples, st.rate)


def _reason(exc: BaseException) -> str:
    """The cause without the path (FFmpeg errors repeat it), one line."""
    return first_line(getattr(exc, "strerror", None) or exc, 160)


# ----------------------------------------------------------------------------- resampling


# The sinc kernel has (16 kHz / g) x ~(rate / g) taps, g = gcd(rate, 16 kHz): tiny for every
# usual rate (44.1 kHz: 160 x 475), gigabytes for a rate that shares no factor with 16 kHz
# (a 64-byte WAV declaring 44,101 Hz asks for 2.8 GB). Such rates are refused.
MAX_KERNEL_TAPS = 1 << 22  # 16 MB of float32


def kernel_taps(rate: int, new_rate: int = SAMPLE_RATE) -> int:
    """How many float32 numbers the resampling kernel for rate -> new_rate holds."""
    g = math.gcd(int(rate), int(new_rate))
    o, n = int(rate) // g, int(new_rate) // g
    width = math.ceil(6 * o / (min(o, n) * 0.99))
    return n * (2 * width + o)


def check_rate(path: str, rate: int) -> int:
    """The rate, or a clear error when resampling it would need an unbounded kernel."""
    if not 1 <= rate <= 10_000_000:
        raise AudioError(f"{path}: sample rate {rate} Hz is not a usable audio rate")
    if rate != SAMPLE_RATE and kernel_taps(rate) > MAX_KERNEL_TAPS:
        raise AudioError(f"{path}: sample rate {rate} Hz shares no common factor with 16 kHz "
                         f"(resampling it would need a {kernel_taps(rate) * 4 / 1e9:.1f} GB filter); "
                         f"convert the file to a usual rate first, e.g. ffmpeg -i IN -ar 48000 OUT.wav")
    return rate


@lru_cache(maxsize=8)
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


class Resampler:
    """``torchaudio.functional.resample`` to 16 kHz, fed block by block.

    The whole-signal computation pads `width` zeros in front and `width + o` behind and
    takes one dot product per output phase every `o` input samples; here each frame is
    computed as soon as its input has arrived, so memory is one block, not the file."""

    def __init__(self, orig_rate: int, new_rate: int = SAMPLE_RATE, block_frames: int = 1 << 14):
        if kernel_taps(orig_rate, new_rate) > MAX_KERNEL_TAPS:
            raise AudioError(f"resampling {orig_rate} Hz to {new_rate} Hz needs too large a filter")
        self.passthrough = orig_rate == new_rate
        g = math.gcd(int(orig_rate), int(new_rate))
        self.o, self.n = int(orig_rate) // g, int(new_rate) // g
        kernel, self.width = sinc_kernel(self.o, self.n)
        self.kt = np.ascontiguousarray(kernel.T)
        self.taps = kernel.shape[1]
        self.block_frames = block_frames
        self.buf = np.zeros(self.width, np.float32)  # the leading zero padding
        self.n_in = self.n_out = 0

    def _frames(self, buf: np.ndarray) -> tuple[np.ndarray, int]:
        if len(buf) < self.taps:
            return np.zeros(0, np.float32), 0
        n_frames = (len(buf) - self.taps) // self.o + 1
        frames = np.lib.stride_tricks.as_strided(
            buf, shape=(n_frames, self.taps), strides=(self.o * buf.strides[0], buf.strides[0]), writeable=False)
        out = np.empty((n_frames, self.n), np.float32)
        for s in range(0, n_frames, self.block_frames):
            np.matmul(frames[s:s + self.block_frames], self.kt, out=out[s:s + self.block_frames])
        return out.reshape(-1), n_frames

    def push(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        self.n_in += len(x)
        if self.passthrough:
            self.n_out += len(x)
            return x
        buf = np.concatenate([self.buf, x])
        out, used = self._frames(buf)
        self.buf = buf[used * self.o:]
        self.n_out += len(out)
        return out

    def finish(self) -> np.ndarray:
        if self.passthrough:
            return np.zeros(0, np.float32)
        out, _ = self._frames(np.concatenate([self.buf, np.zeros(self.width + self.o, np.float32)]))
        target = math.ceil(self.n * self.n_in / self.o)
        return out[: max(0, target - self.n_out)]


def resample(x: np.ndarray, orig_rate: int, new_rate: int = SAMPLE_RATE,
             block_frames: int = 1 << 14) -> np.ndarray:
    """``torchaudio.functional.resample(x, orig_rate, new_rate)`` of a whole signal."""
    r = Resampler(orig_rate, new_rate, block_frames)
    head = r.push(x)
    tail = r.finish()
    return np.concatenate([head, tail]) if len(tail) else head


# ----------------------------------------------------------------------------- windows


class TooLong(AudioError):
    """More windows than the caller can use; decoding stopped early."""


def _cut(blocks: Iterator[np.ndarray], start: int, end: int | None) -> Iterator[np.ndarray]:
    """Samples [start, end) of a block stream."""
    pos = 0
    for b in blocks:
        lo, hi = max(start - pos, 0), len(b) if end is None else min(end - pos, len(b))
        pos += len(b)
        if hi > lo:
            yield b[lo:hi]
        if end is not None and pos >= end:
            return


def load_windows(source: Source, segs: tuple[float, float] | None = None,
                 max_windows: int | None = None, name: str | None = None) -> list[np.ndarray]:
    """decode -> segs -> 16 kHz -> 30 s windows (the original ``load_audio_single``)."""
    return list(iter_windows(source, segs, max_windows, name))


def iter_windows(source: Source, segs: tuple[float, float] | None = None,
                 max_windows: int | None = None, name: str | None = None) -> Iterator[np.ndarray]:
    """`load_windows` streamed: each window is yielded as soon as it is complete, so peak
    memory is one window plus one block. More than `max_windows` raises TooLong."""
    st = open_audio(source, name)
    path = st.path
    blocks = st.blocks
    if segs is not None:
        start, end = float(segs[0]), float(segs[1])
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            raise AudioError(f"{path}: segs {start:g}:{end:g} must satisfy 0 <= start < end")
        counted = _Counter(blocks)
        blocks = _cut(counted, int(start * st.rate), int(end * st.rate))
    if max_windows is not None and st.seconds is not None:
        span = st.seconds if segs is None else min(end, st.seconds) - start
        # declared lengths of compressed files are estimates: refuse early only when far over
        if span > (max_windows + 1) * WINDOW_SECONDS * 1.1 + 1.0:
            raise TooLong(f"{path}: about {span:.0f} s, more than {max_windows} x 30 s windows")
    rs = Resampler(st.rate)
    cur = np.empty(WINDOW_SAMPLES, np.float32)
    fill = n_windows = 0

    def feed(y: np.ndarray) -> Iterator[np.ndarray]:
        nonlocal cur, fill, n_windows
        while len(y):
            k = min(len(y), WINDOW_SAMPLES - fill)
            cur[fill:fill + k] = y[:k]
            fill += k
            y = y[k:]
            if fill == WINDOW_SAMPLES:
                n_windows += 1
                if max_windows is not None and n_windows > max_windows:
                    raise TooLong(f"{path}: more than {max_windows} x 30 s windows")
                yield cur
                cur, fill = np.empty(WINDOW_SAMPLES, np.float32), 0

    # upsampling multiplies a block's length by up to 16 kHz / rate: push pieces whose
    # output stays near 2^20 samples, whatever rate the header declares
    step = max(1, (1 << 20) * rs.o // rs.n)
    for block in blocks:
        if not np.isfinite(block).all():
            raise AudioError(f"{path}: contains NaN or infinite samples (a damaged float file)")
        for s in range(0, len(block), step):
            yield from feed(rs.push(block[s:s + step]))
    yield from feed(rs.finish())
    if segs is not None and rs.n_in == 0:
        total = counted.n / st.rate
        if int(start * st.rate) >= counted.n:
            raise AudioError(f"{path}: segs start {start:g} s is beyond the end of the audio ({total:.2f} s)")
        raise AudioError(f"{path}: segs {start:g}:{end:g} select no samples")
    if rs.n_in == 0:
        raise AudioError(f"{path}: contains no audio samples")
    # the original's rule: <= 30 s is one window however short; a later piece is kept only
    # if it has more than 8,000 samples
    if fill and (not n_windows or fill > MIN_PIECE_SAMPLES):
        yield cur[:fill]


class _Counter:
    """Passes blocks through, counting samples (to report a file's length after segs)."""

    def __init__(self, blocks: Iterator[np.ndarray]):
        self.blocks, self.n = blocks, 0

    def __iter__(self):
        for b in self.blocks:
            self.n += len(b)
            yield b


def parse_segs(text: str) -> tuple[float, float]:
    """'START:END' in seconds (``12.5:42``) -> (12.5, 42.0)."""
    try:
        start, end = (float(v) for v in text.split(":"))
    except ValueError:
        raise AudioError(f"segs {text!r} must look like START:END in seconds, e.g. 30:60") from None
    if not (0 <= start < end):
        raise AudioError(f"segs {text!r} must satisfy 0 <= START < END")
    return start, end
