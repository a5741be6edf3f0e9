"""`Model`: the one way in, for a script and for every front door (the CLI, the server,
batch, eval, the beets plugin, the demo, the benchmarks).

Shaped like faster-whisper's `WhisperModel` and llm's `model.prompt()`: what loads the model
(device, threads, engines, context) goes to the constructor and is fixed for its life; what
one question wants (answer length, sampling, a schema) goes to the call, checked by the one
table in options.py and completed from the model's own generation config, so the same
question gets the same settings whichever door it comes through. A call returns an
`Answer`: iterate it to stream, or read `text()` / `usage()`, which finish it first.

    from mufun_local import Model
    with Model("Yi3852/MuFun-Base", threads=8) as model:
        print(model.ask("song.flac", "What genre is this?").text())
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .encoder.embedder import Audio, Embedded, audio_inputs
from .errors import MufunError
from .format import weights
from .format.model_dir import ModelDir
from .llm import prompt as prompt_mod
from .options import Options, Request, request as make_request
from .pipeline import Answer, Pipeline, Result
from .tags import FIELDS, TAGS_QUESTION, TAGS_SCHEMA, distinct_terms

_OPTION_NAMES = {f.name for f in fields(Options)}


@dataclass(frozen=True)
class Caches:
    """Where a model keeps audio embeddings and prefix states between questions.
    `Caches.on_disk()` (the default): both under $MUFUN_HOME, size-bounded, shared by every
    process; `Caches.for_batch()`: a file's embeddings in memory between its question groups,
    nothing on disk (a library of 30,000 songs would only churn a disk cache); `Caches()`: none."""

    embeddings: object = None   # encoder.embcache.EmbeddingCache / MemoryCache, or None
    prefixes: object = None     # llm.prefix_cache.PrefixCache, or None

    @classmethod
    def on_disk(cls, prefixes: bool = True) -> "Caches":
        """Both caches under $MUFUN_HOME; `prefixes=False` for runs that never ask about the same
        audio twice (eval, tagging), where saving each prefix state would only cost writes."""
        from .encoder.embcache import EmbeddingCache
        from .llm.prefix_cache import PrefixCache
        from .paths import embeddings_dir, prefixes_dir
        return cls(EmbeddingCache(embeddings_dir()), PrefixCache(prefixes_dir()) if prefixes else None)

    @classmethod
    def for_batch(cls) -> "Caches":
        from .encoder.embcache import MemoryCache
        return cls(MemoryCache())


class Model:
    """A converted MuFun model, ready to answer.

    `model`: a converted model folder, an original checkpoint folder or a hub id (converted
    once into the model cache; a hub id is downloaded first), or an opened ModelDir; default
    $MUFUN_MODEL, else Yi3852/MuFun-Base. `quant`: the weight type a checkpoint or hub id is
    converted to. `caches`: a `Caches` (default: on disk; None: none). Every other keyword is
    a load option (options.Options: threads, device, compute_type, encoder_backend, n_ctx,
    n_gpu_layers, ...). Nothing heavy loads until the first question needs it."""

    def __init__(self, model: str | os.PathLike | ModelDir | None = None, *, quant: str = weights.DEFAULT,
                 caches: Caches | None | str = "disk", quiet: bool = False, **options):
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise MufunError(f"unknown load option(s) {', '.join(unknown)} (choose from "
                             f"{', '.join(sorted(_OPTION_NAMES - {'quiet'}))})")
        self.options = Options(quiet=quiet, **options)  # checked before anything is resolved or converted
        if isinstance(caches, str) and caches != "disk":
            raise MufunError(f"caches={caches!r}: give \"disk\", a Caches, or None")
        if isinstance(model, ModelDir):
            self.dir = model
        else:
            from .store.models import resolve
            self.dir = resolve(None if model is None else str(model), quant=quant, quiet=quiet)
        self.caches = Caches.on_disk() if caches == "disk" else (caches or Caches())
        self._pipe = Pipeline(self.dir, self.options, cache=self.caches.embeddings, prefix_cache=self.caches.prefixes)

    # ------------------------------------------------------------------ what it is
    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def id(self) -> str:
        """The source the model was converted from (a hub id or a checkpoint's name)."""
        return str(self.dir.manifest["source"]["id"])

    @property
    def stop_ids(self) -> set[int]:
        return self._pipe.stop_ids

    @property
    def n_ctx_train(self) -> int:
        return self._pipe.n_ctx_train

    @property
    def pipeline(self) -> Pipeline:
        """The runtime underneath (its session, LLM and audio half): for tools and tests that
        look inside; a script needs only the methods below."""
        return self._pipe

    @property
    def mel_filters(self) -> np.ndarray:
        """The log-mel filters, for decoding ahead of the model (batch prepares files in threads)."""
        return self._pipe.audio.mel_filters

    # ------------------------------------------------------------------ call options
    def request(self, **call) -> Request:
        """A complete Request: what the call gives (max_tokens, temperature, top_p, top_k, seed,
        repeat_penalty, schema, grammar, progress, keep_logits; each checked against
        options.RANGES), the model's generation config for the rest, a random seed unless one
        is given."""
        return make_request(self.dir, **call)

    def _request(self, request: Request | None, call: dict) -> Request:
        if request is not None:
            if call:
                raise MufunError(f"give a request or call options ({', '.join(sorted(call))}), not both")
            return request
        return self.request(**call)

    # ------------------------------------------------------------------ questions
    def ask(self, audio: Audio | list[Audio], question: str, *, segs=None, request: Request | None = None,
            **call) -> Answer:
        """The answer to `question` about the audio (several audios: `<audio>` in the question
        marks where each goes, else they come first). Nothing runs until the answer is read;
        bad audio and a question that cannot fit raise then, before any heavy work."""
        return self._pipe.ask(audio_inputs(audio, segs), question, self._request(request, call))

    def complete(self, prompt: prompt_mod.Prompt, audio: Audio | list[Audio], *, request: Request | None = None,
                 **call) -> Answer:
        """The continuation of a full prompt (llm.prompt.Prompt: a conversation rendered with
        the model's template) whose pieces surround the audios: what the server answers."""
        return self._pipe.complete(prompt, audio_inputs(audio), self._request(request, call))

    def ask_many(self, audio: Audio | list[Audio], questions: list[str], *, segs=None,
                 request: Request | None = None, parallel: int | None = None, **call) -> list[Result]:
        """Several questions about the same audio, answered side by side (the audio is read once;
        5 questions cost little more than 1); each result equals the lone `ask`'s, token for token."""
        return self._pipe.ask_many(audio_inputs(audio, segs), list(questions), self._request(request, call),
                                   parallel=parallel)

    def forced_logits(self, audio: Audio | list[Audio], question: str, tokens: list[int], *, segs=None) -> np.ndarray:
        """The logits before each of `tokens` fed in as the answer (teacher-forced) to
        `question`: [len(tokens), vocab], the first row the prompt's own. Divergence benchmarks
        compare them with a reference's over the same answer."""
        items = audio_inputs(audio, segs)
        return self._pipe.forced_logits(prompt_mod.build(question, len(items), self._pipe.template), items,
                                        list(tokens))

    def rank(self, audio: Audio | list[Audio], question: str | prompt_mod.Prompt, terms: list[str], *, segs=None,
             request: Request | None = None) -> list[tuple[str, float]]:
        """`terms` ranked by how likely each is as the whole answer to `question` (its tokens and
        the turn's end, teacher-forced after the prompt: exact, not sampled), as probabilities
        normalised over the terms, most likely first. The prompt is read once; the terms are
        scored side by side as one token trie. `question` may be a full prompt (a conversation,
        as `complete` takes: what the server ranks after)."""
        terms = list(distinct_terms(terms))
        if not terms:
            raise MufunError("no terms to rank")
        return self._ranked(audio_inputs(audio, segs), question, terms, self._answer_ids(terms),
                            request or self.request(max_tokens=1, temperature=0.0))

    def _answer_ids(self, terms: list[str]) -> list[list[int]]:
        pipe = self._pipe
        return [prompt_mod.answer_ids(t, pipe.template, pipe.tokenizer.tokenize) for t in terms]

    def _ranked(self, items, question: str | prompt_mod.Prompt, terms: list[str], ids: list[list[int]],
                request: Request) -> list[tuple[str, float]]:
        """`terms` (tokenized as `ids`) with their probabilities, most likely first."""
        pipe = self._pipe
        prm = question if isinstance(question, prompt_mod.Prompt) else prompt_mod.build(question, len(items),
                                                                                        pipe.template)
        return _by_probability(terms, pipe.score(prm, items, ids, request))

    def tags(self, audio: Audio, *, segs=None, vocabulary: dict[str, list[str]] | None = None, top: int = 5,
             max_tokens: int = 512) -> dict:
        """The tag schema's fields (tags.FIELDS: genre, mood, instruments, ...) for one song.

        Without a vocabulary, one greedy answer under the schema. With one (field -> terms; a
        file's or tags.builtin_vocabulary()), each of its fields is answered by ranking its terms
        (rank): `field` is the most likely term, `field_score` its probability, `field_top` and
        `field_top_scores` the first `top`; the fields it lacks are asked as JSON as before.
        All of it reads the song once, and every field's question and terms are scored side by
        side (Pipeline.score_many). A MufunError (one line) when the audio cannot be read or
        a JSON answer is cut off or breaks the schema."""
        if not vocabulary:
            return self.ask(audio, TAGS_QUESTION, segs=segs, request=self.tags_request(max_tokens)).json()
        from .pipeline import score_layout
        from .tags import field_question, free_question, free_schema
        pipe, items = self._pipe, audio_inputs(audio, segs)
        free = [f for f in FIELDS if f not in vocabulary]
        vocab = {f: list(distinct_terms(terms)) for f, terms in vocabulary.items()}
        if not all(vocab.values()):
            raise MufunError(f"no terms for {', '.join(f for f, t in vocab.items() if not t)}")
        prms = [prompt_mod.build(field_question(f), len(items), pipe.template) for f in vocab]
        ids = [self._answer_ids(terms) for terms in vocab.values()]
        request = self.tags_request(max_tokens, free_schema(free) if free else TAGS_SCHEMA)
        layout = score_layout(room=max_tokens if free else 0)  # one context for all of it
        out: dict = {}
        for (field, terms), logp in zip(vocab.items(), pipe.score_many(prms, items, ids, request, layout)):
            ranked = _by_probability(terms, logp)[:max(1, top)]
            out[field], out[f"{field}_score"] = ranked[0][0], round(ranked[0][1], 4)
            out[f"{field}_top"] = [t for t, _ in ranked]
            out[f"{field}_top_scores"] = [round(p, 4) for _, p in ranked]
        if free:
            prm = prompt_mod.build(free_question(free), len(items), pipe.template)
            out.update(pipe.complete(prm, items, request, layout).json())
        return out

    def tags_request(self, max_tokens: int = 512, schema: dict | None = None) -> Request:
        """The request `tags` asks its JSON question with (greedy, the tag schema or the part of
        it no vocabulary answers), for doors that journal it."""
        return self.request(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0,
                            schema=schema or TAGS_SCHEMA)

    def embed(self, audio: Audio, *, segs=None, layers: bool = False,
              timings: dict[str, float] | None = None) -> Embedded:
        """The embeddings the LLM would receive ([windows * 300, hidden] float32), and with
        `layers` the encoder's hidden states 0/7/15/32."""
        items = audio_inputs(audio, segs)
        if len(items) != 1:
            raise MufunError("embed takes one audio")
        return self._pipe.embed(items[0], keep_layers=layers, timings=timings)

    def chat(self, n_ctx: int | None = None, *, request: Request | None = None, **call):
        """A conversation (chat.ChatSession): add audio, send questions turn after turn; earlier
        turns are never evaluated again. Call options hold for every turn."""
        from .chat import ChatSession
        return ChatSession(self._pipe, self._request(request, call), n_ctx)

    def load(self) -> None:
        """Load the LLM's weights and open its context now (a server's first request should not
        wait for them); --ctx when given, else the model's length."""
        self._pipe.session.open(self.options.n_ctx or self.n_ctx_train)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._pipe.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r})"


def _by_probability(terms: list[str], logp: np.ndarray) -> list[tuple[str, float]]:
    """Terms with their log-probabilities normalised over the terms, most likely first."""
    p = np.exp(logp - logp.max())
    p /= p.sum()
    return [(terms[i], float(p[i])) for i in np.argsort(-p, kind="stable")]
