"""The original conversation template and <audio> splicing for any number of audios."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import MufunError


@dataclass(frozen=True)
class Prompt:
    """Text pieces around the audios: texts[0] <audio 0> texts[1] <audio 1> ... texts[n]."""

    texts: list[str]

    @property
    def n_audio(self) -> int:
        return len(self.texts) - 1


def user_text(question: str, n_audio: int, marker: str = "<audio>") -> str:
    """The user's turn as the original writes it: "\\n<audio>QUESTION" for one audio."""
    found = question.count(marker)
    if found == 0:
        return "\n" + marker * n_audio + question
    if found != n_audio:
        raise MufunError(f"the question has {found} {marker} marker(s) but {n_audio} audio file(s) "
                         f"were given; use one marker per file, in order")
    return "\n" + question


def build(question: str, n_audio: int, template: str, marker: str = "<audio>") -> Prompt:
    full = template.format(user=user_text(question, n_audio, marker))
    return Prompt(full.split(marker))


def tokenize(prompt: Prompt, tokenize_text: Callable[[str], list[int]]) -> list[list[int]]:
    """Each text piece tokenized on its own, as the original's tokenizer_image_token does."""
    return [tokenize_text(t) if t else [] for t in prompt.texts]
