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
    flash_attn: bool = False      # llama.cpp's flash attention: off, it loses accuracy on CPUs
    max_tokens: int = 256
    sampling: Sampling = field(default_factory=Sampling)
    verbose: bool = False
    quiet: bool = False           # no notices on stderr (the one-off encoder measurement)
    keep_audio_models: bool = False  # keep the encoder loaded between requests (batch jobs)
    keep_logits: bool = False     # keep the first step's logits (parity checks)
    parallel: int = 8             # ask_many: answers generated side by side (KV memory grows with it)
    schema: dict | None = None    # a JSON Schema answers must satisfy (batch: checked per answer)


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
    peaks: dict[str, float] = field(default_factory=dict)   # MB, see Timer


def _stderr_line(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


class Pipeline:
    def __init__(self, model: ModelDir, options: Options | None = None,
                 log: Callable[[str], None] | None = None, cache=None, prefix_cache=None,
                 progress: Callable[[str, int, int], None] | None = None):
        self.model = model
        self.cache = cache  # an embcache.EmbeddingCache, or None
        self.prefix_cache = prefix_cache  # a prefix_cache.PrefixCache, or None
        self.progress = progress  # (stage, done, total): decode, encoder, prefill, answer
        self.opt = options or Options()
        self.log = log or (lambda msg: None)
        self._encoder = None
        self._encoder_device = "cpu"
        self._choice = None
        self._mel_filters = None
        self._connector = None
        self._llm: LLM | None = None
        self._vocab = None
        m = model.manifest
        self.tokens_per_window = int(m["connector"]["tokens_per_window"])
        self.template = prompt_mod.Template.of(m)
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
            self._encoder_device = self._encoder.device  # the connector follows it, also once it is gone
        return self._encoder

    @property
    def connector(self):
        if self._connector is None:
            from .connector import Connector
            device = self._encoder.device if self._encoder is not None else self._encoder_device
            use_cuda = device == "cuda" and _torch_cuda()
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

    def embed_windows(self, mels: list[np.ndarray], timer: Timer, keep_layers: bool = False,
                      last: bool = False):
        """Embeddings (and hidden states, if asked) of log-mel windows [n_mels, 3000]. With
        `last` (no more audio to encode) the encoder goes before the connector runs: at real
        size it holds ~5 GB that would otherwise sit under the connector's work."""
        self._progress("encoder", 0, len(mels))
        with timer("encoder"):  # loading the encoder, when it is not loaded yet, counts here
            hs = self.encoder.hidden_states(np.stack(mels),
                                            on_batch=lambda k: self._progress("encoder", k, len(mels)))
        if last and not self.opt.keep_audio_models:
            self._encoder = None
            gc.collect()
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
            if self._vocab is not None:
                self._vocab.close()
                self._vocab = None
        return self._llm

    @property
    def tokenizer(self):
        """The loaded LLM, or until it is needed, its vocabulary alone (see llm.Vocab)."""
        if self._llm is not None:
            return self._llm
        if self._vocab is None:
            from .llm import Vocab
            self._vocab = Vocab(self.model.llm_file, verbose=self.opt.verbose)
        return self._vocab

    @property
    def n_ctx_train(self) -> int:
        """The model's context length (the converter writes the GGUF's from the same field)."""
        return int(self.model.manifest["dims"]["max_positions"])

    def context_limit(self) -> int:
        return self.opt.n_ctx or self.n_ctx_train

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
                f"(use --segs to pick a part, or a larger --ctx up to {self.n_ctx_train})")
        return need

    def ask(self, audios: list[AudioInput], question: str) -> Iterator[str]:
        """Stream the answer's text; when the stream ends, `self.result` holds the rest.
        Bad input and requests that cannot fit raise on the first step, before any compute."""
        return self.complete(prompt_mod.build(question, len(audios), self.template), audios)

    def complete(self, prm: prompt_mod.Prompt, audios: list[AudioInput]) -> Iterator[str]:
        """Stream the continuation of a full prompt whose pieces surround the audios.

        What the context already holds of this prompt's leading segments is kept (a second
        question about the same audio evaluates only its own tokens); otherwise the prefix
        (everything before the last segment) comes from the prefix cache or is computed,
        and saved there. The prefix is always evaluated as its own batches, so all three
        ways give the same logits."""
        res = self.result = Result()
        timer = Timer(res.timings, res.peaks)
        plan, keys = self._begin(prm, audios, res)
        llm, embeddings, held = self._hold_prefix(plan, keys, audios, res, timer)
        self.prefill(plan, embeddings, timer, start=held, save=held < len(plan) - 1)
        if self.opt.keep_logits:
            res.first_logits = llm.logits()
        yield from self._generate(llm, res)

    def _begin(self, prm: prompt_mod.Prompt, audios: list[AudioInput], res: Result, keys=None):
        """The prompt's plan and audio keys; res.prompt_tokens set."""
        if prm.n_audio != len(audios):
            raise MufunError(f"the prompt has {prm.n_audio} audio slot(s) for {len(audios)} audio(s)")
        chunks = prompt_mod.tokenize(prm, self.tokenizer.tokenize)
        res.prompt_tokens = sum(map(len, chunks))
        keys = keys if keys is not None else [self.cache_key(a) for a in audios]
        return self.plan(chunks, keys), keys

    def _hold_prefix(self, plan, keys, audios, res: Result, timer: Timer, n_seq: int = 1):
        """Make the context hold as much of the plan's head (all but its last segment) as it
        can without computing: what it holds already, or the prefix cache's state. Returns
        the LLM, the audio embeddings when the rest needs them, and how many leading
        segments are held. The context fits res.prompt_tokens + audio + answer for each of
        n_seq sequences; a request that cannot fit fails here, before any compute."""
        head = [seg for seg, _ in plan[:-1]]
        llm = self._llm  # the weights load after the audio half, when they are not loaded yet
        settings = self.context_settings()
        held, embeddings, state, need = 0, None, None, 0
        if llm is not None and llm.ctx is not None and llm.settings == settings and head:
            held = llm.shared(head)[0]
        if head and held == len(head):
            res.audio_tokens = sum(n for seg, n in llm.segments[:held] if seg[0] == "audio")
            need = self.check_fits(res.prompt_tokens, [res.audio_tokens // self.tokens_per_window])
            held = held if need <= llm.n_ctx and n_seq <= llm.n_seq else 0
        if not head or held < len(head):
            state = self._stored_prefix(head)
            if state is not None:
                res.audio_tokens = state.audio_tokens
                need = self.check_fits(res.prompt_tokens, [res.audio_tokens // self.tokens_per_window])
            else:
                embeddings, need = self.audio_embeddings(audios, timer, res.prompt_tokens, keys=keys)
                res.audio_tokens = sum(len(e) for e in embeddings)

        with timer("load"):
            llm = self.llm
        if llm.ctx is None or llm.n_ctx < need or llm.settings != settings or llm.n_seq < n_seq:
            auto = max(math.ceil(need / CTX_ROUND) * CTX_ROUND, self.opt.n_batch)
            llm.open_context(self.opt.n_ctx or min(self.context_limit(), auto),
                             self.opt.n_batch, self.opt.f32_kv, self.opt.flash_attn, n_seq=n_seq)
            held = 0
        if state is not None:
            with timer("prefix_load"):
                prefix = [(seg, n) for (seg, _), n in zip(plan, self._lengths(plan, state=state))][:len(head)]
                if llm.load_state(state.data, state.positions, prefix):
                    held = len(head)
                else:  # llama.cpp refused it: compute the prefix as if it had not been there
                    self.prefix_cache.discard(state.key)
        if held < len(head) and embeddings is None:
            embeddings, _ = self.audio_embeddings(audios, timer, res.prompt_tokens, keys=keys)
        llm.keep(held)
        return llm, embeddings, held

    def ask_many(self, audios: list[AudioInput], questions: list[str], parallel: int | None = None) -> list[Result]:
        """Results (text included) for several questions about the same audios. The shared
        prefix (system, audio) is evaluated once; then up to `parallel` (default
        opt.parallel) answers are generated side by side (LLM.answer_many): 5 questions take
        little more than one. The answers are the ones `ask` gives, token for token: each
        question and each token is computed in a sequence laid out as a lone request's."""
        prms = [prompt_mod.build(q, len(audios), self.template) for q in questions]
        step = max(1, parallel or self.opt.parallel)
        results: list[Result] = []
        for g in range(0, len(prms), step):
            results += self._answer_group(audios, prms[g:g + step])
        return results

    def _answer_group(self, audios: list[AudioInput], prms: list[prompt_mod.Prompt]) -> list[Result]:
        """ask_many for at most opt.parallel prompts; one after another when their heads differ."""
        shared = Result()
        timer = Timer(shared.timings, shared.peaks)
        plan0, keys = self._begin(prms[0], audios, Result())
        plans = [plan0] + [self._begin(p, audios, Result(), keys)[0] for p in prms[1:]]
        if len(prms) == 1 or any(p[:-1] != plans[0][:-1] or p[-1][0][0] != "text" for p in plans):
            return [self._collect(self.complete(p, audios)) for p in prms]  # no common head
        counts = [sum(len(x) for s, x in p if s[0] == "text") for p in plans]
        shared.prompt_tokens = max(counts)
        longest = plans[counts.index(shared.prompt_tokens)]
        llm, embeddings, held = self._hold_prefix(longest, keys, audios, shared, timer, n_seq=len(prms))
        self.prefill(longest, embeddings, timer, start=held, save=held < len(longest) - 1, head_only=True)
        t0 = time.perf_counter()
        tails_done = []
        self._progress("answer", 0, self.opt.max_tokens)
        logits: list | None = [] if self.opt.keep_logits else None
        answers = llm.answer_many([p[-1][1] for p in plans], self.opt.sampling, self.opt.max_tokens, self.stop_ids,
                                  on_tails=lambda: tails_done.append(time.perf_counter()), first_logits=logits)
        shared.timings["prefill"] = shared.timings.get("prefill", 0.0) + tails_done[0] - t0
        shared.timings["generate"] = time.perf_counter() - tails_done[0]
        shared.peaks["generate"] = peak_rss_mb()
        results = []
        for i, (n_prompt, tokens) in enumerate(zip(counts, answers)):
            stop = bool(tokens) and llm.ends(tokens[-1], self.stop_ids)
            body = tokens[:-1] if stop else tokens
            text = b"".join(llm.token_bytes(t) for t in body).decode("utf-8", errors="replace")
            results.append(Result(text=text, tokens=tokens, prompt_tokens=n_prompt, audio_tokens=shared.audio_tokens,
                                  timings=dict(shared.timings), stopped="stop" if stop else "length",
                                  peaks=dict(shared.peaks), first_logits=logits[i] if logits else None))
        self.result = results[-1]
        return results

    def _collect(self, stream: Iterator[str]) -> Result:
        "".join(stream)
        return self.result

    def context_settings(self) -> dict:
        """The settings open_context records for this pipeline's options (an automatic
        context is never smaller than n_batch; a given one clips it)."""
        from .llm import context_settings
        n_batch = min(self.opt.n_batch, self.opt.n_ctx) if self.opt.n_ctx else self.opt.n_batch
        return context_settings(max(1, n_batch), "f32" if self.opt.f32_kv else "f16", self.opt.flash_attn)

    @staticmethod
    def plan(chunks: list[list[int]], keys: list[str]) -> list[tuple[tuple, object]]:
        """The prompt as segments in order: (("text", ids), ids) and (("audio", key), audio index);
        empty text pieces are left out."""
        from .prefix_cache import audio_segment, text_segment
        out: list[tuple[tuple, object]] = []
        for i, ids in enumerate(chunks):
            if ids:
                out.append((text_segment(ids), ids))
            if i < len(keys):
                out.append((audio_segment(keys[i]), i))
        return out

    def _lengths(self, plan, embeddings=None, state=None) -> list[int]:
        """Positions of each planned segment: audio rows from the embeddings, or from a
        stored state (which holds exactly one audio, see _stored_prefix)."""
        return [len(payload) if seg[0] == "text" else
                (len(embeddings[payload]) if embeddings is not None else state.audio_tokens)
                for seg, payload in plan]

    def _prefix_key(self, head: list[tuple]) -> str:
        from importlib.metadata import version

        from .prefix_cache import prefix_key
        # llama.cpp's state layout is its own: another build may not read it the same way
        return prefix_key(head, self.model.llm_sha256, {**self.context_settings(),
                                                        "llama_cpp": version("llama-cpp-python")})

    def _storable(self, head: list[tuple]) -> bool:
        """Whether this prefix goes to the prefix cache: when there is one, for one audio."""
        return self.prefix_cache is not None and sum(1 for seg in head if seg[0] == "audio") == 1

    def _stored_prefix(self, head: list[tuple]):
        """The stored state of this prefix, when it is storable and the cache has it."""
        return self.prefix_cache.get(self._prefix_key(head)) if self._storable(head) else None

    def audio_embeddings(self, audios: list[AudioInput], timer: Timer, text_tokens: int,
                         used: int = 0, keys: list[str] | None = None) -> tuple[list[np.ndarray], int]:
        """Embeddings for each audio, and the context the request needs (`used` positions are
        already taken). Cheap steps first, cache look-ups and decoding, so that a request
        that cannot fit fails before the encoder runs; the encoder is released afterwards
        (its memory goes back before the LLM's long work) unless keep_audio_models."""
        budget = max(0, self._room(text_tokens, used)[1]) // self.tokens_per_window
        pending: list = []
        for i, a in enumerate(audios):
            key = (keys[i] if keys else self.cache_key(a)) if self.cache is not None else None
            hit = self._usable(self.cache.get(key)) if key else None
            if hit is not None:
                pending.append((hit, None, key))
                budget -= len(hit) // self.tokens_per_window
                continue
            self._progress("decode", i, len(audios))
            try:  # stop decoding a file as soon as it cannot fit
                wins = self.load_windows(a, timer, max_windows=max(budget, 0))[0]
            except audio_mod.TooLong:
                self.check_fits(text_tokens, [self._windows(pending) + budget + 1], used, at_least=True)
                raise
            pending.append((None, wins, key))
            budget -= len(wins)
        need = self.check_fits(text_tokens, [self._windows(pending)], used)
        embeddings = []
        to_encode = sum(1 for h, _, _ in pending if h is None)
        for hit, wins, key in pending:
            if hit is None:
                to_encode -= 1
                hit, _ = self.embed_windows(wins, timer, last=to_encode == 0)
                if key:
                    self.cache.put(key, hit)
            embeddings.append(hit)
        if any(h is None for h, _, _ in pending) and not self.opt.keep_audio_models:
            self.release_audio_models()
        return embeddings, need

    def _usable(self, emb):
        """A cached embedding array, or None when it is not one this model could have made
        (another size, dtype or shape, non-finite values): then it is computed again."""
        hidden = int(self.model.manifest["dims"]["hidden"])
        if (isinstance(emb, np.ndarray) and emb.dtype == np.float32 and emb.ndim == 2 and emb.shape[1] == hidden
                and len(emb) and len(emb) % self.tokens_per_window == 0 and np.isfinite(emb).all()):
            return emb
        return None

    def _windows(self, pending) -> int:
        return sum(len(h) // self.tokens_per_window if h is not None else len(w) for h, w, _ in pending)

    def prefill(self, plan: list[tuple[tuple, object]], embeddings: list[np.ndarray] | None, timer: Timer,
                start: int = 0, save: bool = False, head_only: bool = False) -> None:
        """Evaluate the plan's segments from `start` at consecutive positions, logits at the
        end; with `save`, the head (all but the last segment) goes to the prefix cache once
        evaluated; with `head_only`, the last segment is left for the caller."""
        llm = self.llm
        last = len(plan) - 1
        lengths = self._lengths(plan, embeddings) if embeddings is not None else None
        todo = plan[start:last if head_only else None]
        total = sum(lengths[start:start + len(todo)]) if lengths else \
            sum(len(p) for s, p in todo if s[0] == "text")
        done = 0

        def step(rows: int) -> None:
            self._progress("prefill", done + rows, total)

        with timer("prefill"):
            for i, (seg, payload) in enumerate(todo, start=start):
                if i == last and save and start < i:
                    self._save_prefix(plan[:i], timer)
                if seg[0] == "text":
                    llm.eval_tokens(payload, logits_at_end=i == last, on_batch=step)
                    n = len(payload)
                else:
                    llm.eval_embeddings(embeddings[payload], logits_at_end=i == last, on_batch=step)
                    n = len(embeddings[payload])
                llm.record(seg, n)
                done += n
            if head_only and save and start < last:
                self._save_prefix(plan[:last], timer)

    def _save_prefix(self, head_plan, timer: Timer) -> None:
        from .prefix_cache import PrefixState
        head = [seg for seg, _ in head_plan]
        if not self._storable(head) or self.llm.settings != self.context_settings():
            return
        with timer("prefix_save"):
            llm = self.llm
            audio = sum(n for seg, n in llm.segments if seg[0] == "audio")
            try:
                self.prefix_cache.put(PrefixState(self._prefix_key(head), llm.n_past, audio, llm.save_state()))
            except OSError as exc:  # a full disk costs the next question time, not this answer
                self.log(f"prefix cache: not saved ({exc})")

    def _progress(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def _generate(self, llm: LLM, res: Result) -> Iterator[str]:
        self._progress("answer", 0, self.opt.max_tokens)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        t0 = time.perf_counter()
        res.stopped = "length"
        for tok in llm.generate(self.opt.sampling, self.opt.max_tokens, self.stop_ids):
            res.tokens.append(tok)
            if llm.ends(tok, self.stop_ids):
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
        res.peaks["generate"] = peak_rss_mb()

    def close(self) -> None:
        self.release_audio_models()
        for attr in ("_llm", "_vocab"):
            if getattr(self, attr) is not None:
                getattr(self, attr).close()
                setattr(self, attr, None)


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
