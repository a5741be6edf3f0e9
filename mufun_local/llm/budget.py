"""The context budget: whether prompt + audio + answer fit, and how much audio still can.

Pure arithmetic (no llama.cpp), so a request that cannot fit is refused before any compute
and the rule is unit-tested on its own. Audio comes in 30 s windows of `tokens_per_window`
embeddings each.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import MufunError


@dataclass(frozen=True)
class Budget:
    limit: int              # the context's size: the open one, or the most a new one may have
    tokens_per_window: int  # embeddings per 30 s window (300 for MuFun)
    n_ctx_train: int        # the model's own context length (the largest --ctx)

    def room(self, text_tokens: int, max_tokens: int, used: int = 0) -> int:
        """Positions left for audio once `used` positions, the text and the answer are counted."""
        return self.limit - used - text_tokens - max_tokens

    def windows_left(self, text_tokens: int, max_tokens: int, used: int = 0) -> int:
        return max(0, self.room(text_tokens, max_tokens, used)) // self.tokens_per_window

    def need(self, text_tokens: int, windows: int, max_tokens: int, used: int = 0, at_least: bool = False) -> int:
        """The context this request needs; a one-line error saying how much audio fits when
        it is more than the limit (`at_least`: decoding stopped early, so `windows` is a floor)."""
        audio_tokens = windows * self.tokens_per_window
        room = self.room(text_tokens, max_tokens, used)
        need = self.limit - room + audio_tokens
        if need > self.limit:
            fit = max(0, room // self.tokens_per_window) * 30
            larger = f", or a larger --ctx up to {self.n_ctx_train}" if self.limit < self.n_ctx_train else ""
            if fit:
                hint = f"at most {fit} s of audio fit (use --segs to pick a part{larger})"
            else:  # --segs cannot help: the text and the answer leave no room for one window
                hint = (f"no audio fits: {max(room, 0)} positions are left for it, one 30 s window takes "
                        f"{self.tokens_per_window} (use a lower --max-tokens or a shorter prompt{larger})")
            raise MufunError(
                f"too long for the context: {'at least ' if at_least else ''}{audio_tokens} audio tokens + "
                f"{text_tokens} prompt tokens + {max_tokens} answer tokens"
                + (f" + {used} earlier tokens" if used else "") + f" > {self.limit}; {hint}")
        return need
