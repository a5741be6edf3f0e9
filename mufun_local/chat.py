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

from .llm import prompt as prompt_mod
from .audio.decode import check_source
from .errors import MufunError
from .encoder.embedder import AudioInput, audio_inputs
from .pipeline import Answer, Pipeline, Request

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

    def __init__(self, pipe: Pipeline, request: Request, n_ctx: int | None = None):
        self.pipe = pipe
        self.request = request
        self.n_ctx = n_ctx or min(pipe.n_ctx_train, DEFAULT_CHAT_CTX)
        pipe.session.open(self.n_ctx)
        self.template = pipe.template
        self.pending: list[AudioInput] = []
        self.turns: list[Turn] = []

    def add_audio(self, audio, segs=None) -> None:
        """Audio for the next question: a path, bytes, a file object, samples or an AudioInput."""
        item, = audio_inputs(audio, segs)
        check_source(item.source, item.label)
        self.pending.append(item)

    def reset(self) -> None:
        self.pipe.session.reset()
        self.turns, self.pending = [], []

    def send(self, question: str) -> Answer:
        """The answer to one user turn: iterate it to stream, or read its text(); the turn is
        recorded as it is read (an answer stopped half-way stays half an answer)."""
        pipe = self.pipe
        audios = list(self.pending)
        marker = self.template.marker
        user = self.template.user(question, len(audios)) if audios or not self.turns else question
        prm = prompt_mod.render(self.template, [("user", user)], continued=bool(self.turns))
        if prm.n_audio != len(audios):
            raise MufunError(f"the question has {question.count(marker)} {marker} "
                             f"marker(s) for {len(audios)} new audio file(s)")
        answer = pipe.extend(prm, audios, self.request)  # the audio is embedded here
        self.pending = []
        turn = Turn(question, [{"path": a.label, "segs": a.segs} for a in audios])
        self.turns.append(turn)

        def record(pieces: Iterator[str]) -> Iterator[str]:
            try:
                for piece in pieces:
                    turn.answer += piece
                    yield piece
            finally:
                pieces.close()  # stopped half-way: the answer ends here
                turn.tokens = list(answer.result().tokens)
        return answer.through(record)

    def to_json(self) -> str:
        return json.dumps({
            "model": str(self.pipe.model.path),
            "turns": [{"user": t.question, "audio": t.audio, "assistant": t.answer} for t in self.turns],
        }, indent=2, ensure_ascii=False)
