"""The audio half: a file's 30 s windows -> log-mels -> encoder hidden states -> connector
embeddings (one per 0.1 s), with the engine choice, the embedding-cache key, and lazy loading
and release of the encoder and connector."""
from __future__ import annotations

import gc
import numbers
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable, Union

import numpy as np

from ..audio import decode as audio_mod
from ..format.model_dir import ModelDir
from ..devices import torch_cuda
from ..errors import MufunError
from ..logs import log
from ..timing import Timer

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class AudioInput:
    """One audio of a question. `source`: a path, the file's bytes, a binary file object (read
    once, when made) or float samples, mono at 16 kHz (audio.Source); `name`: what messages
    call it (default: the path)."""

    source: audio_mod.Source
    segs: tuple[float, float] | None = None
    # made already by the caller (batch prefetch, Ray tasks): log-mels, seconds, content hash
    mels: list | None = None
    seconds: float = 0.0
    sha256: str | None = None
    name: str | None = None

    def __post_init__(self):
        self.source = audio_mod.in_memory(self.source)

    @property
    def label(self) -> str:
        return self.name or audio_mod.describe(self.source)


@dataclass
class Embedded:
    embeddings: np.ndarray            # [windows * 300, hidden]
    seconds: float
    windows: int
    hidden_states: object = None      # encoder.HiddenStates when asked for


class AudioEmbedder:
    """Owns the encoder and the connector of one model, loaded when first needed.
    `options` is the pipeline's load-time Options (engine, compute type, device, threads)."""

    def __init__(self, model: ModelDir, options):
        self.model = model
        self.opt = options
        self.tokens_per_window = int(model.manifest["connector"]["tokens_per_window"])
        self.hidden = int(model.manifest["dims"]["hidden"])
        self._encoder = None
        self._encoder_device = "cpu"
        self._choice = None
        self._mel_filters = None
        self._connector = None

    @property
    def choice(self):
        """(backend, compute type) for this machine; `auto` may time each candidate once."""
        if self._choice is None:
            from .choice import choose
            from ..paths import encoder_choice_file

            self._choice = choose(self.model.encoder_dir, self.opt.encoder_backend, self.opt.device,
                                  self.opt.compute_type, self.opt.threads, encoder_choice_file(),
                                  quiet=self.opt.quiet)
        return self._choice

    @property
    def encoder(self):
        if self._encoder is None:
            from .backends import load_encoder
            c = self.choice
            self._encoder = load_encoder(self.model.encoder_dir, c.backend, self.opt.device, c.compute_type,
                                         self.opt.threads, self.opt.encoder_batch)
            log.info("encoder: %s (%s)", self._encoder.describe(), c.reason)
            self._encoder_device = self._encoder.device  # the connector follows it, also once it is gone
        return self._encoder

    @property
    def connector(self):
        if self._connector is None:
            from .connector import Connector
            device = self._encoder.device if self._encoder is not None else self._encoder_device
            use_cuda = device == "cuda" and torch_cuda()
            self._connector = Connector(self.model.connector_file,
                                        int(self.model.manifest["connector"]["pool_stride"]),
                                        "cuda" if use_cuda else "cpu")
        return self._connector

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    @property
    def loaded(self) -> bool:
        return self._encoder is not None or self._connector is not None

    def cache_key(self, item: AudioInput) -> str:
        from .embcache import EmbeddingCache, content_hash

        if item.sha256 is None:
            audio_mod.check_source(item.source, item.label)
        c = self.choice
        return EmbeddingCache.key(item.sha256 or content_hash(item.source), item.segs, self.model.audio_hash,
                                  f"{c.backend}:{c.compute_type}")

    def release(self, encoder_only: bool = False) -> None:
        """Let the encoder (and, unless `encoder_only`, the connector) go: at real size the
        encoder holds ~5 GB the LLM's work should not sit on. The one place they are freed."""
        self._encoder = None
        if not encoder_only:
            self._connector = None
        gc.collect()

    @property
    def mel_filters(self) -> np.ndarray:
        """The Slaney filters the converter stored (no need to load the encoder for them)."""
        if self._mel_filters is None:
            self._mel_filters = self.model.encoder.mel_filters
        return self._mel_filters

    def load_windows(self, item: AudioInput, timer: Timer,
                     max_windows: int | None = None) -> tuple[list[np.ndarray], float]:
        """Log-mels of the item's 30 s windows (decoding overlapped with them) and their
        seconds; decoding stops after `max_windows` (TooLong). Log-mels the caller already
        made pass through."""
        if item.mels is not None:
            return item.mels, item.seconds
        from ..audio.windows import load_log_mels
        return load_log_mels(item.source, item.segs, self.mel_filters, max_windows, timer, name=item.label)

    def embed_windows(self, mels: list[np.ndarray], timer: Timer, keep_layers: bool = False,
                      last: bool = False, progress: Progress | None = None):
        """Embeddings (and hidden states, if asked) of log-mel windows [n_mels, 3000]. With
        `last` (no more audio to encode) the encoder goes before the connector runs: at real
        size it holds ~5 GB that would otherwise sit under the connector's work."""
        show = progress or (lambda *a: None)
        show("encoder", 0, len(mels))
        with timer("encoder"):  # loading the encoder, when it is not loaded yet, counts here
            hs = self.encoder.hidden_states(np.stack(mels), on_batch=lambda k: show("encoder", k, len(mels)))
        if last and not self.opt.keep_audio_models:
            self.release(encoder_only=True)
        with timer("connector"):
            emb = self.connector(hs)
        return emb, (hs if keep_layers else None)

    def embed(self, item: AudioInput, keep_layers: bool = False,
              timings: dict[str, float] | None = None) -> Embedded:
        timer = Timer(timings if timings is not None else {})
        windows, seconds = self.load_windows(item, timer)
        emb, hs = self.embed_windows(windows, timer, keep_layers)
        return Embedded(emb, seconds, len(windows), hs)

    def usable(self, emb):
        """A cached embedding array, or None when it is not one this model could have made
        (another size, dtype or shape, non-finite values): then it is computed again."""
        if (isinstance(emb, np.ndarray) and emb.dtype == np.float32 and emb.ndim == 2 and emb.shape[1] == self.hidden
                and len(emb) and len(emb) % self.tokens_per_window == 0 and np.isfinite(emb).all()):
            return emb
        return None


# What the API takes as audio: a path, the file's bytes, a binary file object, float samples
# (mono, 16 kHz) or an AudioInput; a list of these is several audios in one prompt.
Audio = Union[str, os.PathLike, bytes, BinaryIO, np.ndarray, AudioInput]


def audio_inputs(audio: Audio | list[Audio], segs=None) -> list[AudioInput]:
    """The AudioInputs of what a call gives: one audio or a list ([]: a prompt without audio);
    `segs` is one (start, end) in seconds for one audio, or a list with one (or None) per audio."""
    items = list(audio) if isinstance(audio, (list, tuple)) else [audio]
    if segs is None:
        seg_list = [None] * len(items)
    elif len(items) == 1 and _is_span(segs):
        seg_list = [segs]
    elif isinstance(segs, (list, tuple)) and len(segs) == len(items) and all(s is None or _is_span(s) for s in segs):
        seg_list = list(segs)
    else:
        raise MufunError(f"give segs as (start, end) in seconds, once per audio ({len(items)} here) in order, "
                         f"or not at all")
    out = []
    for item, seg in zip(items, seg_list):
        if isinstance(item, AudioInput):
            if seg is not None:
                raise MufunError("give segs inside the AudioInput, not beside it")
            out.append(item)
        else:
            seg = None if seg is None else (float(seg[0]), float(seg[1]))
            out.append(AudioInput(os.fspath(item) if isinstance(item, os.PathLike) else item, seg))
    return out


def _is_span(s) -> bool:
    return isinstance(s, (list, tuple)) and len(s) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in s)
