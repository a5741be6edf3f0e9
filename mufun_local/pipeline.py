"""audio -> features -> encoder -> connector -> llm: the only module that knows every stage.

A one-shot `ask` runs the audio half first, so the LLM context can be sized to exactly
prompt + audio + answer, and the encoder (~0.7 GB of int8 weights at real size) is released
before the LLM's weights are paged in.
"""
from __future__ import annotations

import codecs
import gc
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from . import audio as audio_mod
from . import prompt as prompt_mod
from .artifacts import ModelDir
from .errors import MufunError
from .llm import LLM, Sampling

CTX_ROUND = 256


@dataclass
class Options:
    """Everything a request can set; defaults come from the model's manifest."""

    device: str = "auto"
    encoder_backend: str = "auto"
    compute_type: str | None = None
    threads: int = 0
    encoder_batch: int = 4
    n_gpu_layers: int = -1
    n_ctx: int | None = None      # None: sized to prompt + audio + max_tokens
    n_batch: int = 512
    f32_kv: bool = False
    max_tokens: int = 256
    sampling: Sampling = field(default_factory=Sampling)
    verbose: bool = False
    quiet: bool = False           # no notices on stderr (the one-off encoder measurement)
    keep_audio_models: bool = False  # keep the encoder loaded between requests (batch jobs)
    keep_logits: bool = False     # keep the first step's logits (parity checks)


@dataclass
class AudioInput:
    path: str
    segs: tuple[float, float] | None = None
    # made already by the caller (batch prefetch, Ray tasks): log-mels, seconds, content hash
    mels: list | None = None
    seconds: float = 0.0
    sha256: str | None = None


@dataclass
class Embedded:
    embeddings: np.ndarray            # [windows * 300, hidden]
    seconds: float
    windows: int
    hidden_states: object = None      # encoder.HiddenStates when asked for


@dataclass
class Result:
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    audio_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    stopped: str = ""
    first_logits: np.ndarray | None = None


def _stderr_line(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Timer:
    """Adds the wall time of each `with timer("stage"):` block to timings["stage"]."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


class Pipeline:
    def __init__(self, model: ModelDir, options: Options | None = None,
                 log: Callable[[str], None] | None = None, cache=None):
        self.model = model
        self.cache = cache  # an embcache.EmbeddingCache, or None
        self.opt = options or Options()
        self.log = log or (lambda msg: None)
        self._encoder = None
        self._choice = None
        self._mel_filters = None
        self._connector = None
        self._llm: LLM | None = None
        m = model.manifest
        self.tokens_per_window = int(m["connector"]["tokens_per_window"])
        self.stop_ids = set(m["stop_ids"])

    # ---------------------------------------------------------------- audio half
    @property
    def encoder_choice(self):
        """(backend, compute type) for this machine; `auto` may time each candidate once."""
        if self._choice is None:
            from .encoder_choice import choose
            from .models import home

            notice = self.log if self.opt.verbose or self.opt.quiet else _stderr_line
            self._choice = choose(self.model.encoder_dir, self.opt.encoder_backend, self.opt.device,
                                  self.opt.compute_type, self.opt.threads, home() / "encoder-choice.json", notice)
        return self._choice

    @property
    def encoder(self):
        if self._encoder is None:
            from .encoder import load_encoder
            c = self.encoder_choice
            self._encoder = load_encoder(self.model.encoder_dir, c.backend, self.opt.device, c.compute_type,
                                         self.opt.threads, self.opt.encoder_batch)
            self.log(f"encoder: {self._encoder.describe()} ({c.reason})")
        return self._encoder

    @property
    def connector(self):
        if self._connector is None:
            from .connector import Connector
            use_cuda = self.encoder.device == "cuda" and _torch_cuda()
            self._connector = Connector(self.model.connector_file,
                                        int(self.model.manifest["connector"]["pool_stride"]),
                                        "cuda" if use_cuda else "cpu")
        return self._connector

    def cache_key(self, item: AudioInput) -> str:
        from .embcache import EmbeddingCache, file_hash

        if item.sha256 is None:
            audio_mod.check_file(item.path)
        c = self.encoder_choice
        return EmbeddingCache.key(item.sha256 or file_hash(item.path), item.segs, self.model.audio_hash,
                                  f"{c.backend}:{c.compute_type}")

    def release_audio_models(self) -> None:
        self._encoder = self._connector = None
        gc.collect()

    @property
    def mel_filters(self) -> np.ndarray:
        """The Slaney filters the converter stored (no need to load the encoder for them)."""
        if self._mel_filters is None:
            from .errors import ModelError
            try:
                self._mel_filters = np.load(self.model.encoder_dir / "frontend.npz")["mel_filters"]
            except (OSError, KeyError, ValueError) as exc:
                raise ModelError(f"{self.model.encoder_dir}: encoder files missing or damaged ({exc})") from None
        return self._mel_filters

    def load_windows(self, item: AudioInput, timer: Timer,
                     max_windows: int | None = None) -> tuple[list[np.ndarray], float]:
        """Log-mels of the item's 30 s windows (decoding overlapped with them) and their
        seconds; decoding stops after `max_windows` (TooLong). Log-mels the caller already
        made pass through."""
        if item.mels is not None:
            return item.mels, item.seconds
        from .frontend import load_log_mels
        return load_log_mels(item.path, item.segs, self.mel_filters, max_windows, timer)

    def embed_windows(self, mels: list[np.ndarray], timer: Timer, keep_layers: bool = False):
        """Embeddings (and hidden states, if asked) of log-mel windows [n_mels, 3000]."""
        with timer("encoder"):  # loading the encoder, when it is not loaded yet, counts here
            hs = self.encoder.hidden_states(np.stack(mels))
        with timer("connector"):
            emb = self.connector(hs)
        return emb, (hs if keep_layers else None)

    def embed(self, item: AudioInput, keep_layers: bool = False,
              timings: dict[str, float] | None = None) -> Embedded:
        timer = Timer(timings if timings is not None else {})
        windows, seconds = self.load_windows(item, timer)
        emb, hs = self.embed_windows(windows, timer, keep_layers)
        return Embedded(emb, seconds, len(windows), hs)

    # ---------------------------------------------------------------- language half
    @property
    def llm(self) -> LLM:
        if self._llm is None:
            from .devices import choose_offload, free_vram_bytes, kv_cache_bytes
            from .llm import gpu_offload_supported

            d = self.model.manifest["dims"]
            gpu = gpu_offload_supported()
            kv = kv_cache_bytes(min(self.opt.n_ctx or d["max_positions"], 8192), d["llm_layers"],
                                d["llm_kv_heads"], d["head_dim"])
            off = choose_offload(self.opt.n_gpu_layers, d["llm_layers"], self.model.llm_file.stat().st_size,
                                 kv, gpu, free_vram_bytes() if gpu and self.opt.n_gpu_layers < 0 else None)
            self.log(f"llm: llama.cpp, {off.n_gpu_layers} layer(s) on the GPU: {off.reason}")
            self._llm = LLM(self.model.llm_file, self.opt.threads, off.n_gpu_layers, verbose=self.opt.verbose)
        return self._llm

    def context_limit(self) -> int:
        return self.opt.n_ctx or self.llm.n_ctx_train

    def _room(self, text_tokens: int, used: int) -> tuple[int, int]:
        """(context limit, positions left for audio) once text, answer and `used` are counted."""
        limit = self.llm.n_ctx if used else self.context_limit()
        return limit, limit - used - text_tokens - self.opt.max_tokens

    def check_fits(self, text_tokens: int, windows: list[int], used: int = 0, at_least: bool = False) -> int:
        """The context size this request needs; a clear error when it cannot fit."""
        audio_tokens = sum(windows) * self.tokens_per_window
        limit, room = self._room(text_tokens, used)
        need = limit - room + audio_tokens
        if need > limit:
            fit = max(0, room // self.tokens_per_window) * 30
            raise MufunError(
                f"too long for the context: {'at least ' if at_least else ''}{audio_tokens} audio tokens + {text_tokens} prompt "
                f"tokens + {self.opt.max_tokens} answer tokens"
                + (f" + {used} earlier tokens" if used else "") + f" > {limit}; at most {fit} s of audio fit "
                f"(use --segs to pick a part, or a larger --ctx up to {self.llm.n_ctx_train})")
        return need

    def ask(self, audios: list[AudioInput], question: str) -> Iterator[str]:
        """Stream the answer's text; when the stream ends, `self.result` holds the rest.
        Bad input and requests that cannot fit raise on the first step, before any compute."""
        m = self.model.manifest
        prm = prompt_mod.build(question, len(audios), m["prompt"]["template"], m["prompt"]["audio_marker"])
        return self.complete(prm, audios)

    def complete(self, prm: prompt_mod.Prompt, audios: list[AudioInput]) -> Iterator[str]:
        """Stream the continuation of a full prompt whose pieces surround the audios."""
        if prm.n_audio != len(audios):
            raise MufunError(f"the prompt has {prm.n_audio} audio slot(s) for {len(audios)} audio(s)")
        res = self.result = Result()
        timer = Timer(res.timings)
        chunks = prompt_mod.tokenize(prm, self.llm.tokenize)
        res.prompt_tokens = sum(map(len, chunks))
        embeddings, need = self.audio_embeddings(audios, timer, res.prompt_tokens)
        res.audio_tokens = sum(len(e) for e in embeddings)

        llm = self.llm
        n_ctx = self.opt.n_ctx or min(self.context_limit(), math.ceil(need / CTX_ROUND) * CTX_ROUND)
        if llm.ctx is None or llm.requested_ctx != n_ctx:
            llm.open_context(n_ctx, self.opt.n_batch, self.opt.f32_kv)
        else:
            llm.reset()
        self.prefill(chunks, embeddings, timer)
        if self.opt.keep_logits:
            res.first_logits = llm.logits()
        yield from self._generate(llm, res)

    def audio_embeddings(self, audios: list[AudioInput], timer: Timer, text_tokens: int,
                         used: int = 0) -> tuple[list[np.ndarray], int]:
        """Embeddings for each audio, and the context the request needs (`used` positions are
        already taken). Cheap steps first, cache look-ups and decoding, so that a request
        that cannot fit fails before the encoder runs; the encoder is released afterwards
        (its memory goes back before the LLM's long work) unless keep_audio_models."""
        budget = max(0, self._room(text_tokens, used)[1]) // self.tokens_per_window
        pending: list = []
        for a in audios:
            key = self.cache_key(a) if self.cache is not None else None
            hit = self.cache.get(key) if key else None
            if hit is not None:
                pending.append((hit, None, key))
                budget -= len(hit) // self.tokens_per_window
                continue
            try:  # stop decoding a file as soon as it cannot fit
                wins = self.load_windows(a, timer, max_windows=max(budget, 0))[0]
            except audio_mod.TooLong:
                self.check_fits(text_tokens, [self._windows(pending) + budget + 1], used, at_least=True)
                raise
            pending.append((None, wins, key))
            budget -= len(wins)
        need = self.check_fits(text_tokens, [self._windows(pending)], used)
        embeddings = []
        for hit, wins, key in pending:
            if hit is None:
                hit, _ = self.embed_windows(wins, timer)
                if key:
                    self.cache.put(key, hit)
            embeddings.append(hit)
        if any(h is None for h, _, _ in pending) and not self.opt.keep_audio_models:
            self.release_audio_models()
        return embeddings, need

    def _windows(self, pending) -> int:
        return sum(len(h) // self.tokens_per_window if h is not None else len(w) for h, w, _ in pending)

    def prefill(self, chunks: list[list[int]], embeddings: list[np.ndarray], timer: Timer) -> None:
        """Evaluate text[0] audio[0] text[1] ... at consecutive positions; logits at the end."""
        llm = self.llm
        with timer("prefill"):
            for i, ids in enumerate(chunks):
                last = i == len(chunks) - 1
                if ids:
                    llm.eval_tokens(ids, logits_at_end=last)
                if i < len(embeddings):
                    llm.eval_embeddings(embeddings[i], logits_at_end=last and not ids)

    def _generate(self, llm: LLM, res: Result) -> Iterator[str]:
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        t0 = time.perf_counter()
        res.stopped = "length"
        for tok in llm.generate(self.opt.sampling, self.opt.max_tokens, self.stop_ids):
            res.tokens.append(tok)
            if tok in self.stop_ids or llm.is_eog(tok):
                res.stopped = "stop"
                break
            piece = utf8.decode(llm.token_bytes(tok))
            if piece:
                res.text += piece
                yield piece
        tail = utf8.decode(b"", final=True)
        if tail:
            res.text += tail
            yield tail
        res.timings["generate"] = time.perf_counter() - t0

    def close(self) -> None:
        self.release_audio_models()
        if self._llm is not None:
            self._llm.close()
            self._llm = None


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
