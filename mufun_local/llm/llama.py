"""Qwen3 in llama.cpp (through llama-cpp-python's C API): token and embedding input, sampling.

Audio reaches the model as embeddings: a batch from ``llama_batch_init(n, n_embd, 1)`` has
`embd` set and no tokens. One sequence holds text tokens and audio embeddings at
consecutive positions; every batch is split to `n_batch` *before* ``llama_decode`` (a larger
one aborts the whole process) and every return code is checked.

llama.cpp's extra buffer types repack quantized weights at load into layouts for its
AMX and AVX kernels. AMX guard: they are off whenever the CPU reports AMX, for two measured
reasons (docs/performance.md, "llama.cpp's AMX kernels", has the figures). A wheel built with GCC up to 12 miscompiles
ggml's AMX tile configuration (`_tile_loadconfig` is inline asm whose memory operand covers 8
of the config's 64 bytes, so the stores to its rows/colsb fields are dropped and `ldtilecfg`
faults): the first decode dies with SIGSEGV. A clang build runs the AMX kernels, but on a
2-core Xeon they bought 16-22 % faster prefill for about 4 GB more memory (a second, repacked
copy of the weights beside the mapped file). Elsewhere they are on only for the weight types
where repacking measured faster (format.weights, `repack`).
``MUFUN_LLAMA_EXTRA_BUFTS=1`` or ``=0`` forces either.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..devices import cpu_has_amx
from ..errors import ModelError, MufunError
from ..logs import route_llama_logs


def use_extra_bufts(quant: str | None = None, cpuinfo: str | None = None, env: dict | None = None) -> bool:
    """Whether llama.cpp may repack a GGUF of weight type `quant` (format.weights) at load:
    never on AMX CPUs; elsewhere where it pays off for that type, or for a GGUF of unknown
    type (`quant` None), llama.cpp's own default (on)."""
    from ..format import weights
    env = os.environ if env is None else env
    forced = env.get("MUFUN_LLAMA_EXTRA_BUFTS")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes", "on")
    if cpu_has_amx(cpuinfo):
        return False
    return quant not in weights.TYPES or weights.TYPES[quant].repack


def gpu_offload_supported() -> bool:
    import llama_cpp
    return bool(llama_cpp.llama_supports_gpu_offload())


def context_settings(n_batch: int, kv_type: str, flash_attn: bool, extra_bufts: bool, unified: bool = False) -> dict:
    """What a context's KV bytes depend on besides the model and the input (the prefix
    cache's key): recorded by open_context, predicted by the pipeline before opening one.
    `unified`: one KV pool shared by every sequence (LLM.score_continuations needs it)."""
    return {"kv": kv_type, "flash_attn": bool(flash_attn), "n_batch": n_batch, "extra_bufts": extra_bufts,
            **({"unified": True} if unified else {})}


@dataclass(frozen=True)
class Sampling:
    """Sampling options; temperature 0 is greedy (options.sampling makes one from a request)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = 0
    grammar: str | None = None    # GBNF the answer must follow (constrain.py), root rule "root"


class ContextOverflow(MufunError):
    pass


class Vocab:
    """The GGUF's tokenizer and sizes without its weights (llama.cpp's `vocab_only` load), so
    a prompt can be tokenized and sized before the weights are paged in: llama.cpp maps the
    whole file in at load (4.9 GB resident for Qwen3-8B q4_k_m), and the encoder should have
    come and gone by then."""

    vocab_only = True

    def __init__(self, path: str | Path, verbose: bool = False, **params):
        import llama_cpp

        route_llama_logs(verbose)
        self._L = L = llama_cpp
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: LLM file missing")
        llama_cpp.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.vocab_only = self.vocab_only
        for k, v in params.items():
            setattr(mp, k, v)
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise ModelError(f"{path}: llama.cpp cannot load this GGUF (truncated or not a model)")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        if not self.vocab_only:  # a vocab-only load has no sizes (they read 0)
            self.n_embd = L.llama_model_n_embd(self.model)
            self.n_ctx_train = L.llama_model_n_ctx_train(self.model)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of text (no BOS). special=False: control tokens written in the text
        (``<|im_end|>``) stay characters; what prompt.tokenize uses for anything typed."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self._L.llama_token * cap)()
        n = self._L.llama_tokenize(self.vocab, data, len(data), buf, cap, False, bool(special))
        if n < 0:
            raise MufunError("tokenizer buffer too small")
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._L.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._L.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(self._L.llama_vocab_is_eog(self.vocab, token))

    def ends(self, token: int, stop_ids: set[int]) -> bool:
        """Whether `token` ends an answer: one of the model's stop ids or an end-of-generation."""
        return token in stop_ids or self.is_eog(token)

    def close(self) -> None:
        if getattr(self, "_L", None) is None or sys is None:  # interpreter shutdown
            return
        if getattr(self, "model", None):
            self._L.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class LLM(Vocab):
    """One llama.cpp model and its context: one sequence, or n_seq side by side (open_context).
    It evaluates and samples; what the context holds is session.Session's bookkeeping."""

    vocab_only = False

    def __init__(self, path: str | Path, threads: int = 0, n_gpu_layers: int = 0,
                 verbose: bool = False, quant: str | None = None):
        """Load the model (weights are memory-mapped); `open_context` makes the context.
        `quant`: the GGUF's weight type (format.weights), which decides repacking."""
        self.ctx = None
        self._tok_batch = self._emb_batch = None
        self.extra_bufts = use_extra_bufts(quant)
        super().__init__(path, verbose, n_gpu_layers=n_gpu_layers, use_extra_bufts=self.extra_bufts)
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.n_ctx = 0
        self.n_seq = 1
        self.n_past = 0
        self.n_decoded = 0  # rows sent to llama_decode, for observing re-evaluation
        # every row's logits, not only a batch's last: the last layer then runs on every row
        # (what an importance matrix needs: llama.cpp drops rows no output needs before it)
        self.logits_every_row = False
        self.settings: dict = {}  # what the open context was opened with (context_settings)

    def open_context(self, n_ctx: int, n_batch: int = 512, f32_kv: bool = False,
                     flash_attn: bool = False, kv_type: str | None = None, n_seq: int = 1,
                     eval_callback=None, unified: bool = False) -> None:
        """(Re)create the context: n_ctx positions for each of n_seq sequences, batches split
        to n_batch rows. Each sequence has its own KV stream (llama.cpp's non-unified cache),
        laid out as if it were alone, so sequence 0 computes what a one-sequence context does.

        Flash attention stays off unless asked for: llama.cpp's CPU kernel rounds through
        F16 and, on a prefix of ~1,200 audio rows, moved the first-step logits by 0.35 (the
        first greedy token changed) for no speed (docs/accuracy.md). f32_kv is the parity setting;
        kv_type ("f16", "f32", "q8_0", ...) names any of llama.cpp's cache types.
        eval_callback: a ggml_backend_sched_eval_callback that sees every graph node (imatrix).
        `unified`: one pool of n_ctx cells for all sequences instead, where a cell can belong to
        several (llama_memory_seq_cp then tags cells instead of copying them): what scoring
        many continuations of one prefix needs."""
        L = self._L
        self._free_context()
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx if unified else n_ctx * n_seq
        cp.n_batch = cp.n_ubatch = self.n_batch = max(1, min(n_batch, n_ctx))
        cp.n_seq_max = self.n_seq = n_seq
        cp.kv_unified = unified
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.no_perf = True
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        kv_type = "f32" if f32_kv else (kv_type or "f16")
        cp.type_k = cp.type_v = getattr(L, f"GGML_TYPE_{kv_type.upper()}")
        if eval_callback is not None:
            cp.cb_eval = self._eval_callback = eval_callback  # kept alive as long as the context
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens (out of memory?)")
        self.n_ctx = L.llama_n_ctx_seq(self.ctx)  # positions one sequence may use
        self._tok_batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._emb_batch = L.llama_batch_init(self.n_batch, self.n_embd, 1)
        self.n_past = 0
        self.settings = context_settings(self.n_batch, kv_type, flash_attn, self.extra_bufts, unified)

    # -- evaluation
    def reset(self) -> None:
        self._L.llama_memory_clear(self._L.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def truncate(self, n_past: int) -> None:
        """Forget positions >= n_past (e.g. an interrupted answer); all of them when llama.cpp
        cannot remove a part."""
        if not self._L.llama_memory_seq_rm(self._L.llama_get_memory(self.ctx), 0, n_past, -1):
            self.reset()
            return
        self.n_past = n_past

    def save_state(self) -> np.ndarray:
        """The sequence's KV state (llama_state_seq_get_data), as bytes."""
        L = self._L
        size = L.llama_state_seq_get_size(self.ctx, 0)
        buf = np.empty(size, dtype=np.uint8)
        got = L.llama_state_seq_get_data(self.ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size, 0)
        if got != size:
            raise MufunError(f"llama.cpp saved {got} of {size} state bytes")
        return buf

    def load_state(self, data: np.ndarray, positions: int) -> bool:
        """Restore a state from save_state into an empty context; False when llama.cpp refuses
        it (another model or settings): the context is left empty."""
        L = self._L
        self.reset()
        if positions > self.n_ctx:
            return False
        data = np.ascontiguousarray(data, dtype=np.uint8)
        got = L.llama_state_seq_set_data(self.ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                         data.nbytes, 0)
        if got == 0:
            self.reset()
            return False
        self.n_past = positions
        return True

    def _check_room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise ContextOverflow(f"the context holds {self.n_ctx} tokens; "
                                  f"{self.n_past + n} would be needed")

    def _decode(self, batch, n: int) -> None:
        batch.n_tokens = n
        rc = self._L.llama_decode(self.ctx, batch)
        if rc != 0:
            raise MufunError(f"llama_decode failed (code {rc}) at position {self.n_past}")
        self.n_decoded += n
        self.n_past += n

    def _fill_common(self, batch, n: int, want_logits: bool) -> None:
        for i in range(n):
            batch.pos[i] = self.n_past + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = self.logits_every_row
        batch.logits[n - 1] = 1 if want_logits or self.logits_every_row else 0

    def _decode_rows(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence, logits?) rows as one batch (at most n_batch)."""
        b = self._tok_batch
        for i, (tok, pos, seq, logits) in enumerate(rows):
            if not 0 <= tok < self.n_vocab:
                raise MufunError(f"token id {tok} is outside the vocabulary")
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = tok, pos, 1, seq, int(logits)
        b.n_tokens = len(rows)
        rc = self._L.llama_decode(self.ctx, b)
        if rc != 0:
            raise MufunError(f"llama_decode failed (code {rc}) at position {rows[0][1]} of sequence {rows[0][2]}")
        self.n_decoded += len(rows)

    def answer_many(self, tails: list[list[int]], sampling: Sampling, max_tokens: int,
                    stop_ids: set[int], on_tails=None, first_logits: list | None = None) -> list[list[int]]:
        """Continue what sequence 0 holds (a shared prefix) with each tail, and sample an
        answer to each side by side; returns each answer's tokens (a stop token last).

        Sequence s gets a copy of sequence 0's cells in its own KV stream and evaluates its
        tail there, as a one-sequence context would; then every step decodes one token of
        each unfinished answer in one batch, so the weights are read once per step for all
        of them (at full size on two cores, 5 answers took 2.9x the time of one). Each answer
        has its own sampler chain with the same seed, as k separate requests would.
        `on_tails()` is called once every tail is evaluated; `first_logits` (a list) gets each
        tail's last logits. Sequence 0 is left holding the prefix alone."""
        L = self._L
        k = len(tails)
        if not 1 <= k <= self.n_seq:
            raise MufunError(f"{k} answers side by side need a context of {k} sequences (it has {self.n_seq})")
        self._check_room(max(map(len, tails)))
        mem = L.llama_get_memory(self.ctx)
        base = self.n_past
        chains = [self._sampler(sampling) for _ in range(k)]
        out: list[list[int]] = [[] for _ in range(k)]
        pos, nxt = [base] * k, [0] * k
        try:
            for s in range(1, k):
                L.llama_memory_seq_rm(mem, s, -1, -1)
                L.llama_memory_seq_cp(mem, 0, s, -1, -1)
            for s, tail in enumerate(tails):  # each tail in its own batches, as a lone request's
                for i in range(0, len(tail), self.n_batch):
                    part = tail[i:i + self.n_batch]
                    self._decode_rows([(t, base + i + j, s, i + j == len(tail) - 1) for j, t in enumerate(part)])
                pos[s] = base + len(tail)
                if first_logits is not None:
                    first_logits.append(self.logits())
                nxt[s] = int(L.llama_sampler_sample(chains[s], self.ctx, -1))
            if on_tails is not None:
                on_tails()
            active = list(range(k))
            while True:
                still = []
                for s in active:
                    out[s].append(nxt[s])
                    if not (self.ends(nxt[s], stop_ids) or len(out[s]) >= max_tokens
                            or pos[s] >= self.n_ctx):
                        still.append(s)
                if not still:
                    return out
                for i in range(0, len(still), self.n_batch):
                    group = still[i:i + self.n_batch]
                    self._decode_rows([(nxt[s], pos[s], s, True) for s in group])
                    for j, s in enumerate(group):
                        pos[s] += 1
                        nxt[s] = int(L.llama_sampler_sample(chains[s], self.ctx, j))
                active = still
        finally:
            for c in chains:
                L.llama_sampler_free(c)
            for s in range(1, k):
                L.llama_memory_seq_rm(mem, s, -1, -1)
            L.llama_memory_seq_rm(mem, 0, base, -1)

    def score_continuations(self, continuations: list[list[int]], scored_from: list[int] | None = None,
                            on_batch=None) -> np.ndarray:
        """The log-probability of each continuation (a token list) of what sequence 0 holds,
        teacher-forced: the sum over its tokens from `scored_from[c]` on (default 0) of
        log p(token | prefix, the tokens before it). The tokens before that are context fed in
        the continuation's own sequence (a question, the same for many terms). Needs a unified
        context (open_context(unified=True)); one whose sequence 0 ends with the prefix's
        logits (logits_at_end) when some continuation is scored from its first token.

        The continuations are scored as one token trie: a token shared by several of them
        (their common start) is evaluated once, in a cell that belongs to each of their
        sequences, after sequence 0's prefix cells were tagged with them (seq_cp shares cells in
        a unified cache: the prefix is never copied). A round holds, in order, as many as the
        context's free cells and its n_seq - 1 spare sequences take; its cells (trie_cells) are
        freed after it; `on_batch(continuations done)` after each round. Only tokens that
        others follow are evaluated: a continuation's last token is scored by the logits before
        it and never fed in. Sequence 0 is left as it was."""
        if not self.settings.get("unified") or self.n_seq < 2:
            raise MufunError("scoring continuations needs a unified context of at least 2 sequences")
        skip = list(scored_from) if scored_from is not None else [0] * len(continuations)
        if len(skip) != len(continuations) or not all(0 <= k < len(c) for k, c in zip(skip, continuations)):
            raise MufunError("each continuation needs a token to score")
        first = self.logits() if 0 in skip else None
        out: list[float] = []
        for a, b in self._rounds(continuations):
            out += self._score_round(continuations[a:b], skip[a:b], first)
            if on_batch is not None:
                on_batch(len(out))
        return np.array(out)

    def _rounds(self, continuations: list[list[int]]) -> list[tuple[int, int]]:
        """[start, end) of each round: consecutive continuations whose trie fits the free cells
        and the spare sequences (a continuation too long alone is a round of its own, refused)."""
        free, rounds, start, cells = self.n_ctx - self.n_past, [], 0, set()
        for c, toks in enumerate(continuations):
            fed = _fed_prefixes(toks)
            if c > start and (c - start == self.n_seq - 1 or len(cells | fed) > free):
                rounds.append((start, c))
                start, cells = c, fed
            else:
                cells |= fed
        return rounds + [(start, len(continuations))] if continuations else rounds

    def _score_round(self, group: list[list[int]], skip: list[int], first: np.ndarray | None) -> list[float]:
        """score_continuations for at most n_seq - 1 continuations, continuation c in sequence c + 1."""
        L = self._L
        mem = L.llama_get_memory(self.ctx)
        base = self.n_past
        # the trie: node i is (token, depth, parent node or -1), in the sequences seqs[i]
        nodes: list[tuple[int, int, int]] = []
        seqs: list[list[int]] = []
        index: dict[tuple[int, int], int] = {}
        paths: list[list[int]] = []
        for c, toks in enumerate(group):
            parent, path = -1, []
            for d, t in enumerate(toks):
                if not 0 <= t < self.n_vocab:
                    raise MufunError(f"token id {t} is outside the vocabulary")
                if (parent, t) not in index:
                    index[(parent, t)] = len(nodes)
                    nodes.append((t, d, parent))
                    seqs.append([])
                parent = index[(parent, t)]
                seqs[parent].append(c + 1)
                path.append(parent)
            paths.append(path)
        children: dict[int, list[int]] = {}
        for i, (_, _, p) in enumerate(nodes):
            children.setdefault(p, []).append(i)
        scored = {n for path, k in zip(paths, skip) for n in path[k:]}
        logp: dict[int, float] = {}  # scored node -> log p(its token | the tokens before it)
        if first is not None:
            logp.update(_picked_logps(first, [(ch, nodes[ch][0]) for ch in children[-1] if ch in scored]))
        # what is fed in: the nodes with children (a leaf's token only needs its parent's logits),
        # parents before children (a batch may hold both: positions order them)
        order = sorted((i for i in range(len(nodes)) if i in children), key=lambda i: nodes[i][1])
        if base + len(order) > self.n_ctx:
            raise ContextOverflow(f"the context holds {self.n_ctx} tokens; {base + len(order)} would be needed")
        step = min(self.n_batch, SCORE_BATCH)
        batch = L.llama_batch_init(step, 0, len(group) + 1)
        try:
            for s in range(1, len(group) + 1):
                L.llama_memory_seq_rm(mem, s, -1, -1)
                L.llama_memory_seq_cp(mem, 0, s, -1, -1)
            for b0 in range(0, len(order), step):
                part = order[b0:b0 + step]
                wanted = [[(ch, nodes[ch][0]) for ch in children[i] if ch in scored] for i in part]
                for j, i in enumerate(part):
                    batch.token[j], batch.pos[j], batch.n_seq_id[j] = nodes[i][0], base + nodes[i][1], len(seqs[i])
                    for m, sq in enumerate(seqs[i]):
                        batch.seq_id[j][m] = sq
                    batch.logits[j] = int(bool(wanted[j]))
                batch.n_tokens = len(part)
                rc = L.llama_decode(self.ctx, batch)
                if rc != 0:
                    raise MufunError(f"llama_decode failed (code {rc}) scoring continuations at position {base}")
                self.n_decoded += len(part)
                for j, picks in enumerate(wanted):
                    if picks:
                        row = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, j), shape=(self.n_vocab,))
                        logp.update(_picked_logps(row, picks))
        finally:
            L.llama_batch_free(batch)
            for s in range(1, len(group) + 1):
                L.llama_memory_seq_rm(mem, s, -1, -1)
        return [sum(logp[n] for n in path[k:]) for path, k in zip(paths, skip)]

    def eval_tokens(self, tokens: list[int], logits_at_end: bool = True, on_batch=None) -> None:
        """Evaluate tokens at the next positions of sequence 0; `on_batch(rows done)` after each batch."""
        self._check_room(len(tokens))
        for s in range(0, len(tokens), self.n_batch):
            part = tokens[s:s + self.n_batch]
            last = s + self.n_batch >= len(tokens)
            b = self._tok_batch
            for i, t in enumerate(part):
                if not 0 <= t < self.n_vocab:
                    raise MufunError(f"token id {t} is outside the vocabulary")
                b.token[i] = t
            self._fill_common(b, len(part), logits_at_end and last)
            self._decode(b, len(part))
            if on_batch is not None:
                on_batch(s + len(part))

    def eval_embeddings(self, emb: np.ndarray, logits_at_end: bool = False, on_batch=None) -> None:
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.n_embd:
            raise MufunError(f"embeddings must be [n, {self.n_embd}], got {list(emb.shape)}")
        self._check_room(len(emb))
        for s in range(0, len(emb), self.n_batch):
            part = emb[s:s + self.n_batch]
            last = s + self.n_batch >= len(emb)
            b = self._emb_batch
            ctypes.memmove(b.embd, part.ctypes.data, part.nbytes)
            self._fill_common(b, len(part), logits_at_end and last)
            self._decode(b, len(part))
            if on_batch is not None:
                on_batch(s + len(part))

    def logits(self) -> np.ndarray:
        ptr = self._L.llama_get_logits_ith(self.ctx, -1)
        if not ptr:
            raise MufunError("no logits available")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    # -- generation
    def _sampler(self, s: Sampling):
        L = self._L
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if s.grammar:  # first: every later sampler sees only the tokens the grammar allows
            from llama_cpp._utils import suppress_stdout_stderr
            with suppress_stdout_stderr(disable=False):  # its parser prints errors itself
                grammar = L.llama_sampler_init_grammar(self.vocab, s.grammar.encode("utf-8"), b"root")
            if not grammar:
                L.llama_sampler_free(chain)
                raise MufunError("llama.cpp cannot parse the grammar (GBNF with a root rule expected)")
            L.llama_sampler_chain_add(chain, grammar)
        if s.repeat_penalty != 1.0:
            # The binding declares a leading n_vocab that newer llama.cpp headers dropped;
            # ints and floats travel in separate registers, so passing last_n in both int
            # slots is right for either signature.
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(
                s.repeat_last_n, s.repeat_last_n, s.repeat_penalty, 0.0, 0.0))
        if s.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))
        return chain

    def generate(self, sampling: Sampling, max_tokens: int, stop_ids: set[int]) -> Iterator[int]:
        """Yield sampled token ids; each non-stop token is fed back. The prompt must end with
        logits. The stop token is yielded (not evaluated) and ends the stream."""
        chain = self._sampler(sampling)
        try:
            for _ in range(max_tokens):
                tok = int(self._L.llama_sampler_sample(chain, self.ctx, -1))
                yield tok
                if self.ends(tok, stop_ids):
                    return
                if self.n_past >= self.n_ctx:
                    return
                self.eval_tokens([tok])
        finally:
            self._L.llama_sampler_free(chain)

    def _free_context(self) -> None:
        L = self._L
        for attr in ("_tok_batch", "_emb_batch"):
            if getattr(self, attr, None) is not None:
                L.llama_batch_free(getattr(self, attr))
                setattr(self, attr, None)
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None

    def close(self) -> None:
        if getattr(self, "_L", None) is None or sys is None:  # interpreter shutdown
            return
        self._free_context()
        super().close()


def load_llm(model, threads: int = 0, n_gpu_layers: int = -1, n_ctx: int | None = None,
             verbose: bool = False) -> LLM:
    """A converted model's GGUF (`model`: a model_dir.ModelDir), with as many layers on the
    GPU as asked for and as fit beside a KV cache for `n_ctx` (devices.choose_offload)."""
    from ..devices import choose_offload, free_vram_bytes, kv_cache_bytes

    d = model.manifest["dims"]
    gpu = gpu_offload_supported()
    kv = kv_cache_bytes(min(n_ctx or d["max_positions"], 8192), d["llm_layers"], d["llm_kv_heads"], d["head_dim"])
    off = choose_offload(n_gpu_layers, d["llm_layers"], model.llm_file.stat().st_size,
                         kv, gpu, free_vram_bytes() if gpu and n_gpu_layers < 0 else None)
    from ..logs import log
    log.info("llm: llama.cpp, %d layer(s) on the GPU: %s", off.n_gpu_layers, off.reason)
    return LLM(model.llm_file, threads, off.n_gpu_layers, verbose=verbose, quant=model.manifest["llm"]["quant"])


SCORE_BATCH = 256  # rows a scoring decode holds: near full speed (128+ rows), logits buffer 256 x vocab


def trie_cells(continuations: list[list[int]]) -> int:
    """The KV cells scoring these continuations in one round takes: their distinct proper
    prefixes (the trie's nodes that other tokens follow; score_continuations feeds only those)."""
    return len(set().union(*map(_fed_prefixes, continuations)))


def _fed_prefixes(tokens: list[int]) -> set[tuple[int, ...]]:
    """A continuation's proper prefixes: the trie nodes on its path that are fed (all but its last)."""
    return {tuple(tokens[:d]) for d in range(1, len(tokens))}


def _picked_logps(logits: np.ndarray, picks: list[tuple[int, int]]) -> dict[int, float]:
    """{key: log-softmax(logits)[token]} for (key, token) picks: one log-sum-exp, no full row."""
    m = float(logits.max())
    lse = m + math.log(float(np.exp(logits - m).sum(dtype=np.float64)))
    return {key: float(logits[tok]) - lse for key, tok in picks}
