"""audio -> embeddings -> prompt -> llama.cpp -> text: the short orchestrator of one model.

The stages live elsewhere: the audio half in encoder/embedder.py, the context arithmetic in
llm/budget.py, the prompt in llm/prompt.py, what the llama.cpp context holds in
llm/session.py (which alone opens and fills it, and decides what of a prompt it keeps),
llama.cpp in llm/llama.py. Load-time choices are `Options` (fixed for a Pipeline's life);
what one question wants is a `Request`, passed to each call and never stored
(faster-whisper's constructor arguments vs TranscriptionOptions). model.Model builds the
Pipeline and completes each Request from the model's defaults, so this module has none of its
own. Calls return an `Answer`: iterate it for the text; result()/text()/usage() finish it
(llm's Response).

A one-shot `ask` runs the audio half first, so the LLM context can be sized to exactly
prompt + audio + answer, and the encoder is released before the LLM's weights are paged in.
"""
from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .audio import decode as audio_mod
from .llm import prompt as prompt_mod
from .format.model_dir import ModelDir
from .llm.budget import Budget
from .encoder.embedder import AudioEmbedder, AudioInput, Embedded, Progress  # noqa: F401  (AudioInput, Embedded: API)
from .errors import MufunError
from .llm.llama import LLM, Sampling  # noqa: F401  (Sampling: API)
from .options import Options, Request
from .llm.session import Segment, Session, plan as plan_segments
from .timing import Timer, peak_rss_mb


@dataclass
class Result:
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    audio_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    stopped: str = ""
    first_logits: np.ndarray | None = None
    peaks: dict[str, float] = field(default_factory=dict)   # MB, see timing.Timer


@dataclass(frozen=True)
class Layout:
    """The context a call needs besides its prompt and audio: `n_seq` sequences side by side,
    in one KV pool (`unified`: what scoring a vocabulary needs), with `room` positions after the
    prompt (None: the request's max_tokens). Calls that give the same layout share one context,
    so a song's audio prefix is read once for all of them (Model.tags)."""

    n_seq: int = 1
    unified: bool = False
    room: int | None = None


class Answer:
    """An answer being made (llm's Response): iterate it for the text as it is generated;
    `result()`, `text()`, `usage()` and `json()` run it to the end first, so a half-made
    answer is never read as a whole one. Nothing runs until it is first read."""

    def __init__(self, pieces: Iterator[str], result: Result, request: Request):
        self._pieces = pieces
        self._result = result
        self._request = request

    def __iter__(self) -> "Answer":
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def through(self, step: Callable[[Iterator[str]], Iterator[str]]) -> "Answer":
        """This answer with its pieces passed through `step` (a generator over them)."""
        return Answer(step(self._pieces), self._result, self._request)

    def close(self) -> None:
        """Stop here (a client went away, Ctrl-C): what was made so far is the result."""
        self._pieces.close()

    def result(self) -> Result:
        """Tokens, counts, timings and why it stopped, once the answer is finished."""
        for _ in self._pieces:
            pass
        return self._result

    def text(self) -> str:
        return self.result().text

    def usage(self) -> dict[str, int]:
        """Positions read (prompt text and audio) and tokens generated (the stop token not counted)."""
        res = self.result()
        return {"prompt_tokens": res.prompt_tokens, "audio_tokens": res.audio_tokens,
                "completion_tokens": len(res.tokens) - (res.stopped == "stop")}

    def json(self):
        """The answer parsed as JSON; with a schema in the request, checked against it too. A
        MufunError (one line) when it is cut off or breaks the schema."""
        from .llm.grammar import finished_json
        return finished_json(self.text(), self._request.max_tokens, self._request.schema)


PER_ROUND = 128   # continuations scored side by side, each in its own sequence (llama.cpp allows 256)
SCORE_ROOM = 1024  # KV cells kept free for them: the built-in vocabulary's 5 questions and 121 terms take ~510


def score_layout(room: int = 0) -> Layout:
    """The layout scoring continuations (Pipeline.score_many) takes, keeping `room` positions
    for what is asked after. The same whatever the vocabulary (rounds fit its cells and
    sequences), so rankings of vocabularies of other sizes find the context open and keep the
    song's prefix."""
    return Layout(n_seq=PER_ROUND + 1, unified=True, room=max(SCORE_ROOM, room))


def _share_head(plans: list[list[Segment]]) -> bool:
    """Whether the plans differ only in their last segment, a text (questions about the same audios)."""
    return not any(p[-1].is_audio or p[:-1] != plans[0][:-1] for p in plans)


class Pipeline:
    def __init__(self, model: ModelDir, options: Options | None = None, cache=None, prefix_cache=None):
        self.model = model
        self.cache = cache  # an embcache.EmbeddingCache, or None
        self.opt = options or Options()
        self.audio = AudioEmbedder(model, self.opt)
        self.session = Session(model, self.opt, self._load_llm, prefix_cache)  # prefix_cache: a PrefixCache or None
        self._vocab = None
        m = model.manifest
        self.tokens_per_window = self.audio.tokens_per_window
        self.template = prompt_mod.Template.of(m)
        self.stop_ids = set(m["stop_ids"])

    def embed(self, item: AudioInput, keep_layers: bool = False,
              timings: dict[str, float] | None = None) -> Embedded:
        return self.audio.embed(item, keep_layers, timings)

    # ---------------------------------------------------------------- language half
    @property
    def llm(self) -> LLM:
        """The model's LLM (its weights loaded on first use); its context is the session's."""
        return self.session.llm

    def _load_llm(self) -> LLM:
        from .llm.llama import load_llm
        llm = load_llm(self.model, self.opt.threads, self.opt.n_gpu_layers, self.opt.n_ctx, self.opt.verbose)
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None
        return llm

    @property
    def tokenizer(self):
        """The loaded LLM, or until it is needed, its vocabulary alone (see llm.Vocab)."""
        if self.session.loaded is not None:
            return self.session.loaded
        if self._vocab is None:
            from .llm.llama import Vocab
            self._vocab = Vocab(self.model.llm_file, verbose=self.opt.verbose)
        return self._vocab

    @property
    def n_ctx_train(self) -> int:
        return self.session.n_ctx_train

    def budget(self, used: int = 0) -> Budget:
        """The open context's budget when `used` positions are taken in it; else the most a
        new context may have (--ctx, or the model's length)."""
        limit = self.session.n_ctx if used else (self.opt.n_ctx or self.n_ctx_train)
        return Budget(limit, self.tokens_per_window, self.n_ctx_train)

    def ask(self, audios: list[AudioInput], question: str, request: Request) -> Answer:
        """The answer to `question` about `audios` (the original's one-question template).
        Bad input and requests that cannot fit raise on the first piece, before any compute."""
        return self.complete(prompt_mod.build(question, len(audios), self.template), audios, request)

    def complete(self, prm: prompt_mod.Prompt, audios: list[AudioInput], request: Request,
                 layout: Layout = Layout()) -> Answer:
        """The continuation of a full prompt whose pieces surround the audios.

        What the context already holds of this prompt's leading segments is kept (a second
        question about the same audio evaluates only its own tokens); otherwise the prefix
        (everything before the last segment) comes from the prefix cache or is computed,
        and saved there. The prefix is always evaluated as its own batches, so all three
        ways give the same logits."""
        res = Result()
        return Answer(self._complete(prm, audios, request, res, layout), res, request)

    def _complete(self, prm, audios, req: Request, res: Result, layout: Layout) -> Iterator[str]:
        llm = self._read_prompt(prm, audios, req, res, layout)
        if req.keep_logits:
            res.first_logits = llm.logits()
        yield from self._generate(llm, req, res)

    def _read_prompt(self, prm, audios, req: Request, res: Result, layout: Layout = Layout()) -> LLM:
        """Evaluate the whole prompt (what the context holds of it kept, the prefix restored or
        computed and saved), logits at its end; the LLM."""
        timer = Timer(res.timings, res.peaks)
        plan = self._plan(prm, audios, res)
        llm, embeddings, held = self._hold_head(plan, audios, req, res, timer, layout)
        self.session.prefill(plan, embeddings, timer, req.progress, start=held, save=held < len(plan) - 1)
        return llm

    def forced_logits(self, prm: prompt_mod.Prompt, audios: list[AudioInput], tokens: list[int],
                      request: Request | None = None) -> np.ndarray:
        """The logits before each of `tokens` (an answer fed in, teacher-forced) after the
        prompt: [len(tokens), vocab], the first row the prompt's own. What divergence
        benchmarks compare against the reference's logits over the same answer."""
        req = request or Request(max_tokens=max(1, len(tokens)))
        llm = self._read_prompt(prm, audios, req, Result())
        out = [llm.logits()]
        for t in tokens[:-1]:
            llm.eval_tokens([t])
            out.append(llm.logits())
        return np.stack(out)

    def score(self, prm: prompt_mod.Prompt, audios: list[AudioInput], continuations: list[list[int]],
              request: Request, layout: Layout | None = None) -> np.ndarray:
        """The log-probability of each continuation (token ids, teacher-forced) of the prompt
        (score_many for one prompt)."""
        return self.score_many([prm], audios, [continuations], request, layout)[0]

    def score_many(self, prms: list[prompt_mod.Prompt], audios: list[AudioInput],
                   continuations: list[list[list[int]]], request: Request,
                   layout: Layout | None = None) -> list[np.ndarray]:
        """The log-probability of each continuation (token ids, teacher-forced) of each prompt.
        The prompts differ only in their last text (one question each about the same audios,
        as Model.tags asks): their head is read once (kept, restored or computed), and each
        one's last text is fed as the common start of its continuations, unscored, so every
        question and every term is one token trie, scored side by side in few large batches
        (LLM.score_continuations) in a context whose KV cells all sequences share (`layout`,
        default score_layout's). request.progress hears ("rank", continuations done, all of
        them) after each round."""
        res = Result()
        plans, counts = self._plans(prms, audios)
        if not _share_head(plans):
            raise MufunError("prompts scored together must differ only in their last text")
        tails = [list(p[-1].ids) for p in plans]
        flat = [tail + list(c) for tail, conts in zip(tails, continuations) for c in conts]
        if not flat:
            return [np.zeros(0) for _ in prms]
        timer = Timer(res.timings, res.peaks)
        llm = self._read_head(plans, counts, audios, request, res, timer, layout or score_layout())
        logp = llm.score_continuations(flat, [len(t) for t, conts in zip(tails, continuations) for _ in conts],
                                       on_batch=lambda done: request.show("rank", done, len(flat)))
        bounds = np.cumsum([0] + [len(c) for c in continuations])
        return [logp[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def extend(self, prm: prompt_mod.Prompt, audios: list[AudioInput], request: Request) -> Answer:
        """A later turn of the conversation the open context holds (chat): only `prm` and its
        audios are evaluated, after what is there. The audio is embedded now (bad audio or a
        turn that cannot fit raises here); the prompt is read when the answer is iterated."""
        req, res = request, Result()
        llm = self.llm
        timer = Timer(res.timings, res.peaks)
        plan = self._plan(prm, audios, res)
        embeddings = self.audio_embeddings(audios, timer, res.prompt_tokens, req, used=self.session.n_past,
                                           plan=plan)
        res.audio_tokens = sum(len(e) for e in embeddings)

        def pieces() -> Iterator[str]:
            self.session.prefill(plan, embeddings, timer, req.progress)
            yield from self._generate(llm, req, res)
        return Answer(pieces(), res, req)

    def _plan(self, prm: prompt_mod.Prompt, audios: list[AudioInput], res: Result, keys=None) -> list[Segment]:
        """The prompt as segments (the audios named by their embedding keys, or `keys`);
        res.prompt_tokens set."""
        if prm.n_audio != len(audios):
            raise MufunError(f"the prompt has {prm.n_audio} audio slot(s) for {len(audios)} audio(s)")
        chunks = prompt_mod.tokenize(prm, self.tokenizer.tokenize)
        res.prompt_tokens = sum(map(len, chunks))
        keys = keys if keys is not None else [self.audio.cache_key(a) for a in audios]
        return plan_segments(chunks, keys)

    def _plans(self, prms: list[prompt_mod.Prompt], audios: list[AudioInput]) -> tuple[list[list[Segment]], list[int]]:
        """Each prompt's plan and its prompt tokens (the audios' cache keys worked out once)."""
        keys = [self.audio.cache_key(a) for a in audios]
        plans, counts = [], []
        for p in prms:
            r = Result()
            plans.append(self._plan(p, audios, r, keys))
            counts.append(r.prompt_tokens)
        return plans, counts

    def _read_head(self, plans: list[list[Segment]], counts: list[int], audios, req: Request, res: Result,
                   timer: Timer, layout: Layout) -> LLM:
        """Hold and evaluate the head that plans sharing one (_share_head) have, in a context
        sized for the longest of them (res.prompt_tokens); their last segments are left to the
        caller. The LLM."""
        res.prompt_tokens = max(counts)
        longest = plans[counts.index(res.prompt_tokens)]
        llm, embeddings, held = self._hold_head(longest, audios, req, res, timer, layout)
        self.session.prefill(longest, embeddings, timer, req.progress, start=held, save=held < len(longest) - 1,
                             head_only=True)
        return llm

    def _hold_head(self, plan: list[Segment], audios, req: Request, res: Result, timer: Timer,
                   layout: Layout = Layout()):
        """Ask the session to hold the plan's head (all but its last segment) in a context that
        fits res.prompt_tokens + audio + answer (or layout.room) in its layout; embed the audio
        when its rows are not known otherwise or the head must be computed. Returns the LLM,
        the embeddings (None when not needed) and how many leading segments are held. A
        request that cannot fit fails before the encoder runs and before the weights load."""
        head, ses = plan[:-1], self.session
        embeddings = None
        rows = ses.known_audio_rows(head, layout.unified)
        if rows is None:
            embeddings = self.audio_embeddings(audios, timer, res.prompt_tokens, req, plan=plan)
            rows = sum(len(e) for e in embeddings)
        res.audio_tokens = rows
        room = req.max_tokens if layout.room is None else layout.room
        need = self.budget().need(res.prompt_tokens, rows // self.tokens_per_window, room)
        with timer("load"):  # the weights load after the audio half, when they are not loaded yet
            llm = ses.llm
        held = ses.hold(head, need, layout.n_seq, timer, layout.unified)
        if held < len(head) and embeddings is None:
            embeddings = self.audio_embeddings(audios, timer, res.prompt_tokens, req, plan=plan)
        return llm, embeddings, held

    def ask_many(self, audios: list[AudioInput], questions: list[str], request: Request,
                 parallel: int | None = None) -> list[Result]:
        """Results (text included) for several questions about the same audios. The shared
        prefix (system, audio) is evaluated once; then up to `parallel` (default
        opt.parallel) answers are generated side by side (LLM.answer_many): 5 questions take
        little more than one. The answers are the ones `ask` gives, token for token: each
        question and each token is computed in a sequence laid out as a lone request's."""
        req = request
        prms = [prompt_mod.build(q, len(audios), self.template) for q in questions]
        step = max(1, parallel or self.opt.parallel)
        results: list[Result] = []
        for g in range(0, len(prms), step):
            results += self._answer_group(audios, prms[g:g + step], req)
        return results

    def _answer_group(self, audios: list[AudioInput], prms: list[prompt_mod.Prompt], req: Request) -> list[Result]:
        """ask_many for at most opt.parallel prompts; one after another when their heads differ."""
        shared = Result()
        timer = Timer(shared.timings, shared.peaks)
        plans, counts = self._plans(prms, audios)
        if len(prms) == 1 or not _share_head(plans):
            return [self.complete(p, audios, req).result() for p in prms]  # no common head
        llm = self._read_head(plans, counts, audios, req, shared, timer, Layout(n_seq=len(prms)))
        t0 = time.perf_counter()
        tails_done = []
        req.show("answer", 0, req.max_tokens)
        logits: list | None = [] if req.keep_logits else None
        answers = llm.answer_many([list(p[-1].ids) for p in plans], req.sampling, req.max_tokens, self.stop_ids,
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
        return results

    def audio_embeddings(self, audios: list[AudioInput], timer: Timer, text_tokens: int, req: Request,
                         used: int = 0, plan: list[Segment] | None = None) -> list[np.ndarray]:
        """Embeddings for each audio (`plan`'s audio segments hold their cache keys); `used`
        positions of the context are taken already. Cheap steps first, cache look-ups and
        decoding, so that a request that cannot fit fails before the encoder runs; the
        encoder is released afterwards (its memory goes back before the LLM's long work)
        unless keep_audio_models."""
        budget = self.budget(used)
        left = budget.windows_left(text_tokens, req.max_tokens, used)
        keys = {seg.index: seg.audio_key for seg in plan or () if seg.is_audio}
        pending: list = []
        for i, a in enumerate(audios):
            key = (keys.get(i) or self.audio.cache_key(a)) if self.cache is not None else None
            hit = self.audio.usable(self.cache.get(key)) if key else None
            if hit is not None:
                pending.append((hit, None, key))
                left -= len(hit) // self.tokens_per_window
                continue
            req.show("decode", i, len(audios))
            try:  # stop decoding a file as soon as it cannot fit
                wins = self.audio.load_windows(a, timer, max_windows=max(left, 0))[0]
            except audio_mod.TooLong:
                budget.need(text_tokens, self._windows(pending) + left + 1, req.max_tokens, used, at_least=True)
                raise
            pending.append((None, wins, key))
            left -= len(wins)
        budget.need(text_tokens, self._windows(pending), req.max_tokens, used)  # refuses what cannot fit
        embeddings = []
        to_encode = sum(1 for h, _, _ in pending if h is None)
        for hit, wins, key in pending:
            if hit is None:
                to_encode -= 1
                hit, _ = self.audio.embed_windows(wins, timer, last=to_encode == 0, progress=req.progress)
                if key:
                    self.cache.put(key, hit)
            embeddings.append(hit)
        if any(h is None for h, _, _ in pending) and not self.opt.keep_audio_models:
            self.audio.release()
        return embeddings

    def _windows(self, pending) -> int:
        return sum(len(h) // self.tokens_per_window if h is not None else len(w) for h, w, _ in pending)

    def _generate(self, llm: LLM, req: Request, res: Result) -> Iterator[str]:
        req.show("answer", 0, req.max_tokens)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        t0 = time.perf_counter()
        res.stopped = "length"
        for tok in llm.generate(req.sampling, req.max_tokens, self.stop_ids):
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

    @property
    def prefix_cache(self):
        return self.session.prefix_cache

    def close(self) -> None:
        self.audio.release()
        self.session.close()
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None
