"""What one llama.cpp context holds, kept in one place: the context's settings and sequences,
the prompt segments it holds from position 0, and the saved prefix (prefix_cache.py) that
can stand in for computing them. The Pipeline, chat and the server open, fill and ask the
context only through a Session; llm.LLM below it only evaluates and samples.

A prompt is planned as `Segment`s: text tokens, or one audio's embeddings (named by its
embedding key). After each is evaluated it is recorded, so a later prompt can keep what it
shares with what is there: a second question about the same song evaluates only its own
tokens. Positions evaluated without a record (an answer's tokens) are forgotten by `keep`.
Whether a prompt's head (all but its last segment) is kept, restored from the prefix cache
or computed is decided here, by `hold`: the pipeline asks, and computes what is left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from .llama import LLM
from ..logs import log
from ..timing import Timer

CTX_ROUND = 256  # an automatic context is sized up to a multiple of this

@dataclass(frozen=True)
class Segment:
    """One piece of a planned prompt: text (`ids`), or the prompt's audio number `index`,
    whose embeddings have the key `audio_key` (content, segs, encoder: see embcache)."""

    ids: tuple[int, ...] = ()
    audio_key: str | None = None
    index: int = -1

    @property
    def is_audio(self) -> bool:
        return self.audio_key is not None

    def positions(self, embeddings: list[np.ndarray]) -> int:
        return len(embeddings[self.index]) if self.is_audio else len(self.ids)


Plan = list  # [Segment] in prompt order


def plan(chunks: list[list[int]], keys: list[str]) -> Plan:
    """The prompt as segments in order: the text pieces (empty ones left out) around the audios."""
    out: Plan = []
    for i, ids in enumerate(chunks):
        if ids:
            out.append(Segment(ids=tuple(ids)))
        if i < len(keys):
            out.append(Segment(audio_key=keys[i], index=i))
    return out


class Session:
    """The context of one model. `load_llm()` gives the model's LLM, loading its weights on
    first use (the pipeline loads them after the audio half); `options` are the pipeline's
    Options; `prefix_cache` a prefix_cache.PrefixCache or None."""

    def __init__(self, model, options, load_llm: Callable[[], LLM], prefix_cache=None):
        self.model = model
        self.opt = options
        self._load_llm = load_llm
        self._llm: LLM | None = None
        self.prefix_cache = prefix_cache
        self.segments: list[tuple[Segment, int]] = []  # (segment, positions) from position 0
        self.unified = False  # whether the current call wants one KV pool for all sequences (scoring)
        self.settings: dict = {}                      # what the open context was opened with

    # -- the context
    @property
    def llm(self) -> LLM:
        if self._llm is None:
            self._llm = self._load_llm()
        return self._llm

    @property
    def n_ctx_train(self) -> int:
        """The model's context length (the converter writes the GGUF's from the same field)."""
        return int(self.model.manifest["dims"]["max_positions"])

    @property
    def loaded(self) -> LLM | None:
        """The LLM when its weights are loaded, else None (nothing is loaded by asking)."""
        return self._llm

    @property
    def is_open(self) -> bool:
        return self._llm is not None and self._llm.ctx is not None

    @property
    def n_ctx(self) -> int:
        """Positions one sequence of the open context may use (0 when none is open)."""
        return self._llm.n_ctx if self.is_open else 0

    @property
    def n_past(self) -> int:
        return self._llm.n_past if self.is_open else 0

    @property
    def n_seq(self) -> int:
        return self._llm.n_seq if self.is_open else 0

    @property
    def wanted(self) -> dict:
        """The settings a context opened for these options (and the current call's `unified`)
        has: an automatic context is never smaller than n_batch; a given one clips it."""
        return {**self._wanted, **({"unified": True} if self.unified else {})}

    @cached_property
    def _wanted(self) -> dict:
        """Options are frozen: worked out once (it reads /proc/cpuinfo for the AMX guard)."""
        from .llama import context_settings, use_extra_bufts
        n_batch = min(self.opt.n_batch, self.opt.n_ctx) if self.opt.n_ctx else self.opt.n_batch
        return context_settings(max(1, n_batch), "f32" if self.opt.f32_kv else "f16", self.opt.flash_attn,
                                use_extra_bufts(self.model.manifest["llm"]["quant"]))

    def open(self, n_ctx: int, n_seq: int = 1) -> None:
        """A new, empty context of n_ctx positions for each of n_seq sequences (with `unified`,
        n_ctx cells shared by all of them)."""
        llm = self.llm
        llm.open_context(n_ctx, self.opt.n_batch, self.opt.f32_kv, self.opt.flash_attn, n_seq=n_seq,
                         unified=self.unified)
        self.segments = []
        self.settings = llm.settings

    def fit(self, need: int, n_seq: int = 1) -> bool:
        """Make the open context hold `need` positions in each of n_seq sequences with these
        options' settings; opens a new one (sized to --ctx, else `need` rounded up, capped at
        the model's length) when it does not. True when it had to."""
        if self.is_open and self.n_ctx >= need and self.settings == self.wanted and self.n_seq >= n_seq:
            return False
        auto = max(math.ceil(need / CTX_ROUND) * CTX_ROUND, self.opt.n_batch)
        self.open(self.opt.n_ctx or min(self.n_ctx_train, auto), n_seq)
        return True

    def reset(self) -> None:
        """Forget everything the context holds (it stays open)."""
        self.llm.reset()
        self.segments = []

    # -- what it holds
    def shared(self, segments: list[Segment]) -> int:
        """How many leading `segments` the open context holds already, with these settings."""
        if not self.is_open or self.settings != self.wanted:
            return 0
        k = 0
        for (have, _), want in zip(self.segments, segments):
            if have != want:
                break
            k += 1
        return k

    def audio_positions(self, k: int | None = None) -> int:
        """Positions the first k recorded segments (all: None) give to audio."""
        return sum(n for seg, n in self.segments[:k] if seg.is_audio)

    def record(self, segment: Segment, n: int) -> None:
        """Note that the last `n` positions evaluated hold `segment`."""
        if sum(k for _, k in self.segments) + n == self.n_past:
            self.segments.append((segment, n))
        else:  # something unrecorded was evaluated in between: trust nothing after it
            self.segments = []

    def keep(self, k: int) -> int:
        """Keep the first k recorded segments, forget every position after them."""
        llm = self.llm
        n = sum(n for _, n in self.segments[:k])
        if k == 0:
            self.reset()
        elif n != llm.n_past:
            llm.truncate(n)
            self._trim(llm.n_past)
        return llm.n_past

    def forget_after(self, n_past: int) -> None:
        """Forget positions >= n_past (an interrupted answer)."""
        self.llm.truncate(n_past)
        self._trim(self.llm.n_past)

    def _trim(self, n_past: int) -> None:
        kept, pos = [], 0
        for seg, n in self.segments:
            if pos + n > n_past:
                break
            kept.append((seg, n))
            pos += n
        self.segments = kept

    # -- holding a prompt's head
    def known_audio_rows(self, head: list[Segment], unified: bool = False) -> int | None:
        """The audio rows of `head` when they are known without the audio half: the context
        holds all of it, or the prefix cache has its state (its header says). None: embed.
        `unified`: the KV layout the call will `hold` with (its states are its own)."""
        self.unified = unified
        if head and self.shared(head) == len(head):
            return self.audio_positions(len(head))
        if self.storable(head):
            lengths = self.prefix_cache.lengths(self._prefix_key(head))
            if lengths is not None and len(lengths) == len(head):
                return sum(n for seg, n in zip(head, lengths) if seg.is_audio)
        return None

    def hold(self, head: list[Segment], need: int, n_seq: int, timer: Timer, unified: bool = False) -> int:
        """Make the context fit `need` positions in each of n_seq sequences (`unified`: `need`
        cells in one pool for all), holding as much of `head` as it can without computing: what
        it holds already (unless it must reopen, larger or with other settings), else the prefix
        cache's state. Every position after the held segments is forgotten. Returns how many
        leading segments of `head` are held."""
        self.unified = unified
        held = 0 if self.fit(need, n_seq) else self.shared(head)
        if held < len(head) and (state := self.stored(head)) is not None:
            with timer("prefix_load"):
                held = len(head) if self.restore(state, head) else 0
        self.keep(held)
        return held

    # -- the saved prefix
    def _prefix_key(self, head: list[Segment]) -> str:
        from importlib.metadata import version

        from .prefix_cache import prefix_key
        # llama.cpp's state layout is its own: another build may not read it the same way
        return prefix_key([("audio", s.audio_key) if s.is_audio else ("text", s.ids) for s in head],
                          self.model.llm_sha256, {**self.wanted, "llama_cpp": version("llama-cpp-python")})

    def storable(self, head: list[Segment]) -> bool:
        """Whether this prefix goes to the prefix cache: when there is one, and it holds audio."""
        return self.prefix_cache is not None and any(seg.is_audio for seg in head)

    def stored(self, head: list[Segment]):
        """The stored state of this prefix (a PrefixState), when storable and the cache has it."""
        return self.prefix_cache.get(self._prefix_key(head)) if self.storable(head) else None

    def restore(self, state, head: list[Segment]) -> bool:
        """Load a stored prefix state of `head` into the context (what it held is dropped);
        False, and the state forgotten, when llama.cpp refuses it or it does not fit `head`
        (the prefix is then computed as if it had not been there)."""
        self.segments = []
        if len(state.lengths) == len(head) and self.llm.load_state(state.data, state.positions):
            self.segments = list(zip(head, state.lengths))
            return True
        self.llm.reset()
        self.prefix_cache.discard(state.key)
        return False

    def save_prefix(self, head: list[Segment], timer: Timer) -> None:
        """The context's state, which holds exactly `head`, to the prefix cache."""
        from .prefix_cache import PrefixState
        if not self.storable(head) or self.settings != self.wanted:
            return
        with timer("prefix_save"):
            llm = self.llm
            try:
                self.prefix_cache.put(PrefixState(self._prefix_key(head), llm.n_past,
                                                  [n for _, n in self.segments[:len(head)]], llm.save_state()))
            except OSError as exc:  # a full disk costs the next question time, not this answer
                log.warning("prefix cache: not saved (%s)", exc)

    # -- evaluation
    def prefill(self, plan: Plan, embeddings: list[np.ndarray] | None, timer: Timer, progress=None,
                start: int = 0, save: bool = False, head_only: bool = False) -> None:
        """Evaluate the plan's segments from `start` at consecutive positions, logits at the
        end; with `save`, the head (all but the last segment) goes to the prefix cache once
        evaluated; with `head_only`, the last segment is left for the caller."""
        llm = self.llm
        last = len(plan) - 1
        todo = plan[start:last if head_only else None]
        total = sum(seg.positions(embeddings) if embeddings is not None else len(seg.ids) for seg in todo)
        done = 0

        def step(rows: int) -> None:
            if progress is not None:
                progress("prefill", done + rows, total)

        with timer("prefill"):
            for i, seg in enumerate(todo, start=start):
                if i == last and save and start < i:
                    self.save_prefix(plan[:i], timer)
                if seg.is_audio:
                    llm.eval_embeddings(embeddings[seg.index], logits_at_end=i == last, on_batch=step)
                else:
                    llm.eval_tokens(list(seg.ids), logits_at_end=i == last, on_batch=step)
                n = seg.positions(embeddings) if seg.is_audio else len(seg.ids)
                self.record(seg, n)
                done += n
            if head_only and save and start < last:
                self.save_prefix(plan[:last], timer)

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
        self.segments, self.settings = [], {}

