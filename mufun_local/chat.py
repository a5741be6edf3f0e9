"""Multi-turn conversations about audio, keeping llama.cpp's KV cache between turns.

Turn format: the original's training template (TinyLLaVA's qwen2_base), which the
single-turn prompt already follows:

    SYSTEM USER: \\n<audio>Q1 ASSISTANT: A1<|endoftext|>USER: Q2 ASSISTANT: A2<|endoftext|>...

so turn 1 is exactly `ask`'s prompt, and each later turn appends only
"<|endoftext|>USER: Q ASSISTANT:" after the tokens already in the cache: earlier turns are
never evaluated again. Audio added with /audio goes into the next user turn.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterator

from . import prompt as prompt_mod
from .audio import check_source
from .errors import MufunError
from .pipeline import AudioInput, Pipeline, Request, Result

DEFAULT_CHAT_CTX = 8192
CHAT_PROMPT = "> "


@dataclass
class Turn:
    question: str
    audio: list[dict]
    answer: str = ""
    tokens: list[int] = field(default_factory=list)


class ChatSession:
    """One conversation in one open context; `request` (sampling, answer length, progress)
    holds for every turn."""

    def __init__(self, pipe: Pipeline, request: Request | None = None, n_ctx: int | None = None):
        self.pipe = pipe
        self.request = request or Request()
        self.n_ctx = n_ctx or min(pipe.n_ctx_train, DEFAULT_CHAT_CTX)
        pipe.session.open(self.n_ctx)
        self.template = pipe.template
        self.pending: list[AudioInput] = []
        self.turns: list[Turn] = []
        self.result: Result | None = None

    def add_audio(self, item: AudioInput) -> None:
        check_source(item.source, item.label)
        self.pending.append(item)

    def reset(self) -> None:
        self.pipe.session.reset()
        self.turns, self.pending = [], []

    def send(self, question: str) -> Iterator[str]:
        """Stream the answer to one user turn."""
        pipe = self.pipe
        audios = list(self.pending)
        marker = self.template.marker
        user = self.template.user(question, len(audios)) if audios or not self.turns else question
        prm = prompt_mod.render(self.template, [("user", user)], continued=bool(self.turns))
        if prm.n_audio != len(audios):
            raise MufunError(f"the question has {question.count(marker)} {marker} "
                             f"marker(s) for {len(audios)} new audio file(s)")
        answer = pipe.extend(prm, audios, self.request)  # the audio is embedded here
        self.result = answer.result
        self.pending = []
        turn = Turn(question, [{"path": a.label, "segs": a.segs} for a in audios])
        self.turns.append(turn)
        try:
            for piece in answer:
                turn.answer += piece
                yield piece
        finally:
            turn.tokens = list(answer.result.tokens)

    def to_json(self) -> str:
        return json.dumps({
            "model": str(self.pipe.model.path),
            "turns": [{"user": t.question, "audio": t.audio, "assistant": t.answer} for t in self.turns],
        }, indent=2, ensure_ascii=False)
