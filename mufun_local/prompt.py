"""The conversation template, in one place: turns -> the text pieces around the audios ->
token ids, as the original writes and tokenizes them.

MuFun-Base's template (tinyllava's qwen2_base): ``SYSTEM USER: \\n<audio>QUESTION ASSISTANT:``;
a later turn appends `` ANSWER<|endoftext|>USER: QUESTION ASSISTANT:``. The strings live in
each model's manifest (the converter writes these defaults).

Only the control tokens the template itself places (the turn end) are parsed as special
tokens. What a user or an earlier answer wrote is text: a question containing
``<|endoftext|>`` or ``<|im_end|>`` is tokenized as those characters and cannot end a turn.
Non-control added tokens (``<think>``) are matched in text as the original's tokenizer does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from .errors import MufunError

SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
TEMPLATE = SYSTEM_PROMPT + " USER: {user} ASSISTANT:"   # {user} is "\n<audio>QUESTION" for one audio
TURN_TEMPLATE = "USER: {user} ASSISTANT:"               # a later turn
TURN_END = "<|endoftext|>"                              # ends an assistant turn (qwen2_base)
AUDIO_MARKER = "<audio>"


@dataclass(frozen=True)
class Special:
    """A control token the template places (not text anyone typed)."""

    text: str


Fragment = Union[str, Special]


@dataclass(frozen=True)
class Template:
    first: str = TEMPLATE         # the first user turn, system prompt included
    later: str = TURN_TEMPLATE    # every later user turn
    turn_end: str = TURN_END
    marker: str = AUDIO_MARKER

    @classmethod
    def of(cls, manifest: dict) -> "Template":
        p = manifest["prompt"]
        return cls(p["template"], p.get("turn_template", TURN_TEMPLATE), p.get("turn_end", TURN_END),
                   p.get("audio_marker", AUDIO_MARKER))

    def manifest_entry(self) -> dict:
        return {"template": self.first, "audio_marker": self.marker, "turn_template": self.later,
                "turn_end": self.turn_end, "add_bos": False}


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


def user_text(question: str, n_audio: int, marker: str = AUDIO_MARKER) -> str:
    """The user's turn as the original writes it: "\\n<audio>QUESTION" for one audio; a
    question may place its markers itself (one per audio, in order)."""
    found = question.count(marker)
    if found == 0:
        return "\n" + marker * n_audio + question
    if found != n_audio:
        raise MufunError(f"the question has {found} {marker} marker(s) but {n_audio} audio file(s) "
                         f"were given; use one marker per file, in order")
    return "\n" + question


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
    """One question about n_audio audios (the original's single-turn prompt)."""
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
