"""The server's requests: an OpenAI chat-completions body -> what the worker runs (a Job:
the prompt around the audios, decoded from base64 in memory; the sampling; stop strings),
and the stop strings applied to the answer as it streams. Every client mistake is a
RequestError carrying its HTTP status and OpenAI's error fields."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import threading
from dataclasses import dataclass, field

from ..llm import prompt as prompt_mod
from ..encoder.embedder import AudioInput
from ..errors import MufunError
from ..llm.llama import Sampling

AUDIO_FORMATS = {"wav", "mp3", "flac", "ogg", "opus", "m4a", "aac", "webm", "oga", "mp4", "aiff", "wma"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, etype: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


@dataclass
class Job:
    prompt: prompt_mod.Prompt
    audios: list[AudioInput]
    sampling: Sampling
    max_tokens: int
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    deadline: float = math.inf       # time.monotonic() after which the job is stopped (504)
    cancel: threading.Event = field(default_factory=threading.Event)
    rank: tuple[str, ...] | None = None  # terms to rank as the answer instead of generating one


class StopFilter:
    """Streams text while watching for stop strings: text that could be the start of a stop
    string is held back until the next piece says whether it is one, so no part of a stop
    string spanning two pieces reaches the client."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text, self.sent, self.hit = "", 0, False

    def push(self, piece: str) -> str:
        """Add a piece; returns what may be sent now (sets .hit at a stop string)."""
        self.text += piece
        cuts = [self.text.find(s, self.sent) for s in self.stops]  # what was sent holds none
        cuts = [c for c in cuts if c >= 0]
        if cuts:
            self.text, self.hit = self.text[:min(cuts)], True
            return self._take(len(self.text))
        hold = max((k for s in self.stops for k in range(min(len(s) - 1, len(self.text)), 0, -1)
                    if self.text.endswith(s[:k])), default=0)
        return self._take(len(self.text) - hold)

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        out, self.sent = self.text[self.sent:upto], max(self.sent, upto)
        return out


def _user_text(content, audios: list[AudioInput], template: prompt_mod.Template) -> str:
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise RequestError(400, "message content must be a string or a list of parts", "messages")
    marker = template.marker
    text, n_audio = "", 0
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            t = str(part.get("text", ""))
            if marker in t:
                raise RequestError(400, f"text parts may not contain {marker}; send audio as input_audio parts",
                                   "messages")
            text += t
        elif kind == "input_audio":
            text += marker
            n_audio += 1
            spec = part.get("input_audio")
            if not isinstance(spec, dict):
                raise RequestError(400, "input_audio must be an object with data and format", "messages")
            audios.append(AudioInput(_audio_data(spec), _segs(spec.get("segs")),
                                     name=f"input_audio {len(audios) + 1}"))
        else:
            raise RequestError(400, f"unsupported content part type {kind!r} (use text or input_audio)", "messages")
    return template.user(text, n_audio) if n_audio else text


def _segs(value) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(400, "input_audio.segs must be [start, end] in seconds", "messages") from None
    if not (math.isfinite(end) and 0 <= start < end):
        raise RequestError(400, "input_audio.segs must satisfy 0 <= start < end", "messages")
    return start, end


def _audio_data(spec: dict) -> bytes:
    fmt = str(spec.get("format", "")).lower().lstrip(".")
    if fmt not in AUDIO_FORMATS:
        raise RequestError(400, f"unsupported audio format {fmt!r}; use one of {', '.join(sorted(AUDIO_FORMATS))}",
                           "messages", "unsupported_audio_format")
    try:
        data = base64.b64decode(spec.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise RequestError(400, "input_audio.data is not valid base64", "messages", "invalid_base64") from None
    if not data:
        raise RequestError(400, "input_audio.data is empty", "messages", "empty_audio")
    return data  # FFmpeg finds the format from the bytes themselves, as from a file


def build_prompt(messages, manifest: dict) -> tuple[prompt_mod.Prompt, list[AudioInput]]:
    """OpenAI messages -> the original template's text pieces around the audios."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "messages")
    template = prompt_mod.Template.of(manifest)
    audios: list[AudioInput] = []
    turns: list[tuple[str, str]] = []
    expect = "user"
    for msg in messages:
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "system":
            continue
        if role not in ("user", "assistant"):
            raise RequestError(400, f"unsupported message role {role!r}", "messages")
        if role != expect:
            raise RequestError(400, "messages must alternate user and assistant turns, starting and ending "
                               "with a user turn", "messages")
        if role == "user":
            turns.append(("user", _user_text(msg.get("content"), audios, template)))
            expect = "assistant"
        else:
            content = msg.get("content")
            if isinstance(content, list):
                content = "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            turns.append(("assistant", str(content or "")))
            expect = "user"
    if expect != "assistant":
        raise RequestError(400, "the last message must be a user turn", "messages")
    return prompt_mod.render(template, turns), audios


def request_settings(body: dict, model, max_tokens: int, n_ctx: int | None) -> tuple[Sampling, int, list[str]]:
    """The body's sampling (options.sampling checks every value), answer length (`max_tokens`
    when it gives none, at most `n_ctx`) and stop strings."""
    from ..options import InvalidValue, checked, sampling
    answer = body.get("max_tokens")
    answer = body.get("max_completion_tokens") or max_tokens if answer is None else answer
    try:
        answer_tokens = checked("max_tokens", answer, int, n_ctx)
        chosen = sampling(model, body.get("temperature"), body.get("top_p"), seed=body.get("seed"),
                          grammar=response_grammar(body.get("response_format")))
    except InvalidValue as exc:
        raise RequestError(400, str(exc), exc.param) from None
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise RequestError(400, "stop must be a string or a list of up to 4 strings", "stop")
    return chosen, answer_tokens, stop



def rank_terms(body: dict) -> tuple[str, ...] | None:
    """The `rank` extension: the answer is these terms ranked by their probability as the whole
    answer (`Model.rank`), not generated text. A list of terms, or the name of a built-in
    vocabulary (genre, mood, instruments, tempo_feel, vocals). None when the body has none."""
    from ..tags import builtin_vocabulary, checked_terms
    value = body.get("rank")
    if value is None:
        return None
    if isinstance(value, str):
        vocab = builtin_vocabulary()
        if value not in vocab:
            raise RequestError(400, f"rank: no built-in vocabulary {value[:40]!r}; give a list of terms or one of "
                               f"{', '.join(vocab)}", "rank")
        return tuple(vocab[value])
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise RequestError(400, "rank must be a list of terms (strings) or a built-in vocabulary's name", "rank")
    try:
        terms = checked_terms(value)
    except MufunError as exc:
        raise RequestError(400, f"rank: {exc}", "rank") from None
    if body.get("response_format") is not None:
        raise RequestError(400, "rank answers with one of its terms; it takes no response_format", "rank")
    return terms


def response_grammar(fmt) -> str | None:
    """OpenAI's response_format as a grammar: text (none), json_object, or json_schema."""
    from ..llm import grammar as constrain
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return constrain.json_grammar()
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError(400, "response_format.json_schema.schema must be a JSON Schema object",
                               "response_format")
        try:
            return constrain.schema_grammar(schema)
        except MufunError as exc:
            raise RequestError(400, str(exc), "response_format") from None
    raise RequestError(400, "response_format.type must be text, json_object or json_schema", "response_format")


def parse_body(raw: bytes) -> dict:
    """The request's JSON object; NaN/Infinity (which Python's json accepts) and nesting
    deep enough to exhaust the parser are refused as 400s."""
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")
    try:
        body = json.loads(raw, parse_constant=no_constants)
    except (ValueError, RecursionError):
        raise RequestError(400, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body
