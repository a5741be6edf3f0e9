"""llama.cpp's KV state of a prompt's audio prefix, kept on disk between processes.

In the original template the audio comes before the question, so everything up to the last
audio (system line, ``USER:``, the audio embeddings) is the same for every question about
a file. At the real size that prefix is most of the work (Qwen3-8B prefills ~18 audio rows/s
on two cores), so its KV state — llama.cpp's per-sequence state, 147,456 bytes per position
for Qwen3-8B with an F16 cache — is saved once and restored by later processes: a new
question then costs only its own tokens and the answer, with the same logits as a fresh run
(the prefix is always evaluated as its own batches, so the restored bytes are exactly the
ones a fresh run computes).

A prompt is a list of segments: ``("text", token ids)`` and ``("audio", embedding key)``,
the key covering the file's content, segs, encoder + connector weights and encoder engine.
The file key adds the GGUF's sha256 and the context settings that change the KV bytes.

File: MAGIC, a little-endian u32 header length, a JSON header (format version, key,
positions, audio tokens, size and sha256 of the body), then the bytes of
``llama_state_seq_get_data`` (llama.cpp checks the body's layout, not its values: the
checksum catches a damaged KV). Written to a
temporary sibling and renamed; a file that does not match (another version, key or size, a
truncated or damaged body) is ignored, removed, and written again by the next full prefill.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import lru

MAGIC = b"MUFUNKV\x00"
FORMAT = 1
DEFAULT_LIMIT_MB = 4096
MAX_HEADER = 1 << 16


def text_segment(ids: list[int]) -> tuple:
    return ("text", tuple(ids))


def audio_segment(key: str) -> tuple:
    return ("audio", key)


def prefix_key(segments: list[tuple], model_sha256: str, settings: dict) -> str:
    """Everything the prefix's KV bytes depend on."""
    blob = json.dumps({"format": FORMAT, "model": model_sha256, "settings": settings,
                       "segments": [[kind, list(v) if kind == "text" else v] for kind, v in segments]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class PrefixState:
    key: str
    positions: int        # KV positions the state holds
    audio_tokens: int     # of which audio rows
    data: np.ndarray      # uint8, llama_state_seq_get_data's bytes


class PrefixCache:
    """Bounded on-disk LRU of prefix states (`MUFUN_PREFIX_CACHE_MB`, default 4 GB)."""

    def __init__(self, root: Path, limit_bytes: int | None = None):
        self.root = Path(root)
        if limit_bytes is None:
            limit_bytes = int(float(os.environ.get("MUFUN_PREFIX_CACHE_MB", DEFAULT_LIMIT_MB)) * 1024 * 1024)
        self.limit = max(0, limit_bytes)

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.kv"

    def get(self, key: str) -> PrefixState | None:
        """The state stored under `key`, or None (a file that does not match is removed)."""
        p = self._path(key)
        try:
            with open(p, "rb") as fh:
                state = _read(fh, key, os.fstat(fh.fileno()).st_size)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            state = None
        if state is None:
            p.unlink(missing_ok=True)
            return None
        lru.touch(p)
        return state

    def discard(self, key: str) -> None:
        """Forget a state llama.cpp refused to restore."""
        self._path(key).unlink(missing_ok=True)

    def put(self, state: PrefixState) -> None:
        if state.data.nbytes > self.limit:
            return
        header = json.dumps({"format": FORMAT, "key": state.key, "positions": state.positions,
                             "audio_tokens": state.audio_tokens, "bytes": int(state.data.nbytes),
                             "sha256": hashlib.sha256(memoryview(state.data)).hexdigest()}).encode()

        def write(fh) -> None:
            fh.write(MAGIC + struct.pack("<I", len(header)) + header)
            fh.write(memoryview(state.data))
        if lru.put_or_skip(self._path(state.key), write, "prefix cache"):
            self.evict()

    def evict(self) -> None:
        lru.evict(self.root, "*.kv", self.limit)


def _read(fh, key: str, size: int) -> PrefixState | None:
    head = fh.read(len(MAGIC) + 4)
    if len(head) != len(MAGIC) + 4 or head[:len(MAGIC)] != MAGIC:
        return None
    (n,) = struct.unpack("<I", head[len(MAGIC):])
    if n > MAX_HEADER:
        return None
    try:
        meta = json.loads(fh.read(n))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
        return None
    body = meta.get("bytes")
    positions, audio = meta.get("positions"), meta.get("audio_tokens")
    if not all(isinstance(v, int) and v >= 0 for v in (body, positions, audio)):
        return None
    if body != size - len(MAGIC) - 4 - n or positions < audio:
        return None  # truncated, or grown by someone else: never trust the header's size alone
    data = np.fromfile(fh, dtype=np.uint8, count=body)
    if data.nbytes != body or hashlib.sha256(memoryview(data)).hexdigest() != meta.get("sha256"):
        return None
    return PrefixState(key, positions, audio, data)
