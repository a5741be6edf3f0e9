"""What the CLI's commands share: option groups (their ranges from options.RANGES), logging to
stderr, progress callbacks. The commands are in commands.py."""
from __future__ import annotations

import functools
import logging
import sys

import click

from ..errors import MufunError
from ..logs import NOTICE, log


class FiniteRange(click.FloatRange):
    """A float range that also refuses nan and inf (which pass click's comparisons)."""

    def convert(self, value, param, ctx):
        import math
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def stderr(msg: str) -> None:
    click.echo(msg, err=True)


class _Format(logging.Formatter):
    """Warnings as `warning: ...`; the engines' own lines (-v) as they are."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return f"warning: {msg}" if record.levelno >= logging.WARNING else msg


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest's capture swaps it per test)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose else NOTICE)
    handler = _Stderr()
    handler.setFormatter(_Format())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    log.setLevel(level)
    try:  # CTranslate2's own log (spdlog, on stderr): errors only, unless -v
        import ctranslate2
        ctranslate2.set_log_level(logging.INFO if verbose else logging.ERROR)
    except ImportError:
        pass


def segs_list(values: tuple[str, ...], n: int) -> list:
    from ..audio.decode import parse_segs
    if not values:
        return [None] * n
    if len(values) != n:
        raise MufunError(f"give --segs once per audio file ({n} here), in order, or not at all")
    return [parse_segs(v) for v in values]


def encoder_options(f):
    """--encoder-backend/--compute-type/--device/--threads, handed to the command as one
    `encoder` dict of Options fields."""
    from ..encoder.backends import ALL_COMPUTE_TYPES, BACKENDS

    @functools.wraps(f)
    def wrapper(*args, encoder_backend, compute_type, device, threads, **kw):
        return f(*args, encoder=dict(encoder_backend=encoder_backend, compute_type=compute_type, device=device,
                                     threads=threads, quiet=kw.get("quiet", False)), **kw)

    wrapper = click.option("--threads", type=click.IntRange(min=0), default=0, help="CPU threads (default: all cores).")(wrapper)
    wrapper = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                           help="Where the encoder runs.")(wrapper)
    wrapper = click.option("--compute-type", type=click.Choice(ALL_COMPUTE_TYPES), default=None,
                           help="Encoder compute type (default: the most accurate fast one: float32 on a CPU, "
                                "bfloat16 on OpenVINO where the CPU has it, float16 on CUDA). int8 is faster "
                                "but loses twice what the original's bfloat16 run does (docs/accuracy.md).")(wrapper)
    wrapper = click.option("--encoder-backend", type=click.Choice(("auto",) + BACKENDS), default="auto",
                           show_default=True,
                           help="Engine for the Whisper encoder. auto: CTranslate2 on CUDA; on a CPU the fastest "
                                "converted and installed one, measured once (-v says which and why).")(wrapper)
    return wrapper


def value_range(name: str, integer: bool = False):
    """A flag's click type from options.RANGES (where the server's checks come from too)."""
    from ..options import RANGES
    lo, hi = RANGES[name]
    return click.IntRange(min=lo, max=hi) if integer else FiniteRange(lo, hi)


def sampling_options(f):
    """--temperature, --top-p, --top-k, --repeat-penalty (ask and chat)."""
    for option in reversed((
            click.option("--temperature", type=value_range("temperature"), default=None,
                         help="0 = greedy (default: the model's generation config)."),
            click.option("--top-p", type=value_range("top_p"), default=None),
            click.option("--top-k", type=value_range("top_k", integer=True), default=None),
            click.option("--repeat-penalty", type=value_range("repeat_penalty"), default=1.0, show_default=True))):
        f = option(f)
    return f


def flash_attn_option(f):
    return click.option("--flash-attn", is_flag=True,
                        help="llama.cpp's flash attention. Off by default: it moves the answer's logits on "
                             "long audio, and on CPUs its gain was within noise (see docs/accuracy.md).")(f)


def model_option(f):
    return click.option("--model", "-m", "model", default=None, metavar="M",
                        help="Converted model dir, original checkpoint dir, or hub id "
                             "(default: $MUFUN_MODEL, else Yi3852/MuFun-Base).")(f)


def quant_option(f):
    from ..format import weights
    return click.option("--quant", type=click.Choice(tuple(weights.TYPES)), default=weights.DEFAULT,
                        show_default=True,
                        help=f"LLM weight type in the GGUF. {weights.DEFAULT} (default) is 4-bit: a quarter of F16's "
                             "size, what fits a 16 GB laptop, the fastest on a CPU. q8_0 (twice the size) and f16 "
                             "(four times; as accurate as the original's bfloat16 run) trade memory for accuracy; "
                             "bf16 keeps the release's weights bit for bit (docs/accuracy.md).")(f)


def verbosity(f):
    f = click.option("--quiet", "-q", is_flag=True, help="Only the answer (no warnings).")(f)
    f = click.option("--verbose", "-v", is_flag=True, help="Say what runs where, and llama.cpp's log.")(f)
    return f


def bar_stage(bar):
    """A Request.progress callback that shows the current file's stage after the bar."""
    names = {"decode": "decoding", "encoder": "encoder", "prefill": "reading", "answer": "answering",
             "rank": "ranking"}

    def show(stage: str, done: int, total: int) -> None:
        bar.set_postfix_str(names.get(stage, stage) + (f" {done}/{total}" if stage in ("encoder", "prefill", "rank") else ""),
                            refresh=True)
    return show
