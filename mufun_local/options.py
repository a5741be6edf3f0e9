"""How a Pipeline loads (`Options`) and what one question wants (`Request`), complete and
checked when built, never changed afterwards (both frozen: derive one with
dataclasses.replace). The CLI, the server, batch, eval and the beets plugin all make them
here, so a value is checked once, by one rule, with one message naming it; the CLI's flags
take their ranges from RANGES too.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from .errors import MufunError
from .llm.llama import Sampling

# (lowest, highest) of every number a request may give; None: unbounded
RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "top_k": (0, None),
    "repeat_penalty": (0.0, 10.0),
    "max_tokens": (1, None),
}


class InvalidValue(MufunError):
    """A request value out of its range or of the wrong kind; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def checked(name: str, value, cast=float, hi: float | None = None):
    """`value` as `cast`, finite and within RANGES[name] (and `hi`, when the caller's
    context bounds it further), else InvalidValue naming it."""
    lo, top = RANGES.get(name, (None, None))
    top = hi if top is None else (top if hi is None else min(top, hi))
    try:
        value = cast(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidValue(name, f"{name} must be a number") from None
    if not math.isfinite(value) or (lo is not None and value < lo) or (top is not None and value > top):
        bounds = f"between {lo:g} and {top:g}" if top is not None else f"at least {lo:g}"
        raise InvalidValue(name, f"{name} must be {bounds}")
    return value


@dataclass(frozen=True)
class Options:
    """How the models load and the LLM context opens: fixed for a Pipeline's life."""

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
    verbose: bool = False
    quiet: bool = False           # no notices on stderr (the one-off encoder measurement)
    keep_audio_models: bool = False  # keep the encoder loaded between requests (batch jobs)
    parallel: int = 8             # ask_many: answers generated side by side (KV memory grows with it)

    def __post_init__(self):
        for name, lo in (("threads", 0), ("encoder_batch", 1), ("n_batch", 1), ("parallel", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < lo:
                raise MufunError(f"{name} must be an integer of at least {lo}")
        if self.n_ctx is not None and (not isinstance(self.n_ctx, int) or self.n_ctx < 64):
            raise MufunError("the context size must be at least 64 tokens")


@dataclass(frozen=True)
class Request:
    """What one call wants, complete: made by `request()` from the model's defaults."""

    max_tokens: int = 256
    sampling: Sampling = field(default_factory=Sampling)
    schema: dict | None = None    # a JSON Schema: its grammar constrains sampling, Answer.json() checks the rest
    keep_logits: bool = False     # keep the first step's logits (parity checks)
    progress: object = None       # (stage, done, total) -> None, or None

    def __post_init__(self):
        checked("max_tokens", self.max_tokens, int)
        if self.schema is not None and self.sampling.grammar is None:
            from .llm.grammar import schema_grammar
            object.__setattr__(self, "sampling", replace(self.sampling, grammar=schema_grammar(self.schema)))

    def show(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)


def sampling(model, temperature=None, top_p=None, top_k=None, seed=None, repeat_penalty=1.0,
             grammar: str | None = None) -> Sampling:
    """A request's sampling: what it gives (checked), the model's generation config
    (generation_config.json, in the manifest) for the rest, a random seed when it gives none."""
    d = model.sampling_defaults()
    return Sampling(
        temperature=d["temperature"] if temperature is None else checked("temperature", temperature),
        top_p=d["top_p"] if top_p is None else checked("top_p", top_p),
        top_k=d["top_k"] if top_k is None else checked("top_k", top_k, int),
        repeat_penalty=checked("repeat_penalty", 1.0 if repeat_penalty is None else repeat_penalty),
        seed=random.randrange(2**31) if seed is None else checked("seed", seed, int),
        grammar=grammar)


def request(model, max_tokens: int = 256, temperature=None, top_p=None, top_k=None, seed=None,
            repeat_penalty=1.0, grammar: str | None = None, schema: dict | None = None,
            progress=None, keep_logits: bool = False, max_tokens_limit: int | None = None) -> Request:
    """A complete Request for `model`; `max_tokens_limit` bounds the answer (a server's context).
    A `schema` constrains the answer (its grammar); `grammar` is GBNF; not both."""
    if schema is not None and grammar is not None:
        raise MufunError("give a JSON Schema or a grammar, not both")
    return Request(checked("max_tokens", max_tokens, int, max_tokens_limit),
                   sampling(model, temperature, top_p, top_k, seed, repeat_penalty, grammar),
                   schema=schema, keep_logits=keep_logits, progress=progress)
