"""The conversation template, in one place: turns -> the text pieces around the audios ->
token ids, as the original writes and tokenizes them.

Two training templates (laitselec/MuFun, tinyllava/data/template/): `qwen2_base` (MuFun-Base),
``SYSTEM USER: \\n<audio>QUESTION ASSISTANT:`` with a later turn appending
`` ANSWER<|endoftext|>USER: QUESTION ASSISTANT:``; `qwen2_instruct` (MuFun-Instruct), the audio
as ``<audio>\\nQUESTION`` and ``<|im_end|>`` ending an answer. A one-question `ask` is the
model's own `chat()` wrapper, the same for every release (build). The strings live in each
model's manifest; the converter writes them for the release it detects (variant_of).

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
AUDIO_FIRST = "\n{audio}{question}"    # where a user turn puts its audio: qwen2_base, and chat()


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
    audio: str = AUDIO_FIRST      # a user turn: {audio} markers and {question}
    name: str = "qwen2_base"

    @classmethod
    def of(cls, manifest: dict) -> "Template":
        p = manifest["prompt"]
        return cls(p["template"], p.get("turn_template", TURN_TEMPLATE), p.get("turn_end", TURN_END),
                   p.get("audio_marker", AUDIO_MARKER), p.get("user_audio", AUDIO_FIRST),
                   p.get("variant", "qwen2_base"))

    def manifest_entry(self) -> dict:
        return {"variant": self.name, "template": self.first, "audio_marker": self.marker,
                "turn_template": self.later, "turn_end": self.turn_end, "user_audio": self.audio,
                "add_bos": False}

    def user(self, question: str, n_audio: int) -> str:
        """A user turn of this template with n_audio audios (see user_text)."""
        return user_text(question, n_audio, self.marker, self.audio)


TEMPLATES = {
    "qwen2_base": Template(),
    "qwen2_instruct": Template(turn_end="<|im_end|>", audio="{audio}\n{question}", name="qwen2_instruct"),
}


def variant_of(source: str, config: dict) -> str:
    """The release's template: from the checkpoint's config (tinyllava's `conv_version`) when
    it says, else from the release name in the hub id or folder (MuFun-Instruct), else Base."""
    said = str(config.get("conv_version") or "")
    if said in TEMPLATES:
        return said
    return "qwen2_instruct" if "instruct" in source.lower() else "qwen2_base"


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


def user_text(question: str, n_audio: int, marker: str = AUDIO_MARKER, form: str = AUDIO_FIRST) -> str:
    """A user turn as the template writes it: "\\n<audio>QUESTION" for one audio (qwen2_base,
    chat()), "<audio>\\nQUESTION" (qwen2_instruct); a question may place its markers itself
    (one per audio, in order)."""
    found = question.count(marker)
    if found and found != n_audio:
        raise MufunError(f"the question has {found} {marker} marker(s) but {n_audio} audio file(s) "
                         f"were given; use one marker per file, in order")
    if not found:
        return form.format(audio=marker * n_audio, question=question)
    lead = 0
    while question.startswith(marker, lead):  # markers the question starts with are "{audio}"
        lead += len(marker)
    if not lead and not form.startswith("\n"):
        return question  # markers placed inside the text: as the user wrote it
    return form.format(audio=question[:lead], question=question[lead:])


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
