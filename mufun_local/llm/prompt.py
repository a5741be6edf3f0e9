"""The conversation template, in one place: turns -> the text pieces around the audios ->
token ids, as the original writes and tokenizes them.

Two training templates (laitselec/MuFun, tinyllava/data/template/): `qwen2_base` (MuFun-Base),
``SYSTEM USER: \\n<audio>QUESTION ASSISTANT:`` with a later turn appending
`` ANSWER<|endoftext|>USER: QUESTION ASSISTANT:``; `qwen2_instruct` (MuFun-Instruct), the audio
as ``<audio>\\nQUESTION`` and ``<|im_end|>`` ending an answer. A one-question `ask` is the
model's own `chat()` wrapper, the same for every release (build). The strings live in each
model's manifest (format/templates.py); the converter writes them for the release it detects.

Only the control tokens the template itself places (the turn end) are parsed as special
tokens. What a user or an earlier answer wrote is text: a question containing
``<|endoftext|>`` or ``<|im_end|>`` is tokenized as those characters and cannot end a turn.
Non-control added tokens (``<think>``) are matched in text as the original's tokenizer does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from ..errors import MufunError
from ..format.templates import (AUDIO_FIRST, AUDIO_MARKER, SYSTEM_PROMPT, TEMPLATE, TEMPLATES,  # noqa: F401
                               TURN_END, TURN_TEMPLATE, Template, user_text, variant_of)

@dataclass(frozen=True)
class Special:
    """A control token the template places (not text anyone typed)."""

    text: str


Fragment = Union[str, Special]


@dataclass(frozen=True)
class Prompt:
    """Pieces around the audios: pieces[0] <audio 0> pieces[1] ... pieces[n]; each piece is
    a tuple of fragments, text or Special."""

    pieces: tuple[tuple[Fragment, ...], ...]

    @property
    def n_audio(self) -> int:
        return len(self.pieces) - 1

    @property
    def texts(self) -> list[str]:
        """Each piece as plain text (what the original's template string holds)."""
        return ["".join(f.text if isinstance(f, Special) else f for f in piece) for piece in self.pieces]


def render(template: Template, turns: list[tuple[str, str]], continued: bool = False) -> Prompt:
    """("user", text) and ("assistant", text) turns, alternating, starting and ending with a
    user turn, as one prompt; user texts carry their audio markers (see user_text).
    `continued`: the turns follow a conversation the context already holds (chat), so the
    first one is a later turn."""
    frags: list[Fragment] = []
    for i, (role, text) in enumerate(turns):
        if role == "assistant":
            frags.append(" " + text.strip())
        elif i == 0 and not continued:
            frags.append(template.first.format(user=text))
        else:
            frags += [Special(template.turn_end), template.later.format(user=text)]
    return _split(frags, template.marker)


def build(question: str, n_audio: int, template: Template) -> Prompt:
    """One question about n_audio audios: the model's chat() wrapper (the first turn's
    system line and ``\\n<audio>QUESTION``, the same for every release)."""
    return render(template, [("user", user_text(question, n_audio, template.marker))])


def _split(frags: list[Fragment], marker: str) -> Prompt:
    """Fragments -> pieces split at the audio markers, adjacent texts joined (the tokenizer
    sees the same strings the original's does)."""
    pieces: list[list[Fragment]] = [[]]
    for f in frags:
        if isinstance(f, Special):
            pieces[-1].append(f)
            continue
        for k, part in enumerate(f.split(marker)):
            if k:
                pieces.append([])
            if part and pieces[-1] and isinstance(pieces[-1][-1], str):
                pieces[-1][-1] += part
            elif part:
                pieces[-1].append(part)
    return Prompt(tuple(tuple(p) for p in pieces))


def tokenize(prompt: Prompt, tokenize_text: Callable[..., list[int]]) -> list[list[int]]:
    """Each piece tokenized on its own, as the original's tokenizer_image_token does; text
    without special-token parsing, each Special as its one token.
    `tokenize_text(text, special)` is the model's tokenizer (llm.Vocab.tokenize)."""
    out = []
    for piece in prompt.pieces:
        ids: list[int] = []
        for f in piece:
            if isinstance(f, Special):
                one = tokenize_text(f.text, special=True)
                if len(one) != 1:
                    raise MufunError(f"the template's {f.text!r} is not one token of this model's vocabulary")
                ids += one
            else:
                ids += tokenize_text(f, special=False)
        out.append(ids)
    return out


def answer_ids(text: str, template: Template, tokenize_text: Callable[..., list[int]]) -> list[int]:
    """An assistant's whole answer `text` as the model would write it after ``ASSISTANT:``:
    a space, the text, and the turn's end (the token that closes it: so "Rock" and "Rock and
    Roll" are different answers, not one the prefix of the other)."""
    return tokenize(Prompt(((" " + text.strip(), Special(template.turn_end)),)), tokenize_text)[0]


def parsed_answer(text: str) -> dict | list | None:
    """An answer that is a JSON object or array (MuFun-ACEStep answers so), parsed; else None."""
    import json
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, (dict, list)) else None
