"""The release templates: the strings of the original's training templates
(laitselec/MuFun, tinyllava/data/template/), as each model's manifest stores them, and which
one a checkpoint gets (variant_of). Adding a release template: one entry in TEMPLATES.
Turning them into prompts and token ids is prompt.py's job.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import MufunError

SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
TEMPLATE = SYSTEM_PROMPT + " USER: {user} ASSISTANT:"   # {user} is "\n<audio>QUESTION" for one audio
TURN_TEMPLATE = "USER: {user} ASSISTANT:"               # a later turn
TURN_END = "<|endoftext|>"                              # ends an assistant turn (qwen2_base)
AUDIO_MARKER = "<audio>"
AUDIO_FIRST = "\n{audio}{question}"    # where a user turn puts its audio: qwen2_base, and chat()


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
