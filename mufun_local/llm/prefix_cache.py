"""llama.cpp's KV state of a prompt's audio prefix, kept on disk between processes.

In the original template the audio comes before the question, so everything up to the last
audio (system line, ``USER:``, the audio embeddings) is the same for every question about
a file. At the real size that prefix is most of the work (Qwen3-8B prefills ~18 audio rows/s
on two cores), so its KV state — llama.cpp's per-sequence state, 147,456 bytes per position
for Qwen3-8B with an F16 cache — is saved once and restored by later processes: a new
question then costs only its own tokens and the answer, with the same logits as a fresh run
(the prefix is always evaluated as its own batches, so the restored bytes are exactly the
ones a fresh run computes).

A prefix is a list of segments: ``("text", token ids)`` and ``("audio", embedding key)``,
the key covering the file's content, segs, encoder + connector weights and encoder engine.
The file key adds the GGUF's sha256 and the context settings that change the KV bytes; the
state keeps each segment's positions, so a prompt with several audios is kept like one with
a single audio.

File: MAGIC, a little-endian u32 header length, a JSON header (format version, key,
positions of each segment, size and sha256 of the body), then the bytes of
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

from .. import lru

MAGIC = b"MUFUNKV\x00"
FORMAT = 2  # 2: the segments' lengths (1 held only the total and the audio rows)
DEFAULT_LIMIT_MB = 4096
MAX_HEADER = 1 << 16


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
    lengths: list[int]    # of which each segment's, in order (they add up to positions)
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

    def lengths(self, key: str) -> list[int] | None:
        """The segment lengths of the state stored under `key`, from its header alone (its
        body is checked when it is read), or None."""
        try:
            with open(self._path(key), "rb") as fh:
                meta = _header(fh, key, os.fstat(fh.fileno()).st_size)
        except OSError:
            return None
        return None if meta is None else meta["lengths"]

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
                             "lengths": [int(n) for n in state.lengths], "bytes": int(state.data.nbytes),
                             "sha256": hashlib.sha256(memoryview(state.data)).hexdigest()}).encode()

        def write(fh) -> None:
            fh.write(MAGIC + struct.pack("<I", len(header)) + header)
            fh.write(memoryview(state.data))
        if lru.put_or_skip(self._path(state.key), write, "prefix cache"):
            self.evict()

    def evict(self) -> None:
        lru.evict(self.root, "*.kv", self.limit)


def _header(fh, key: str, size: int) -> dict | None:
    """The header of a state file of `size` bytes, when it is one of this format for `key`
    and the file is exactly as long as it says; else None."""
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
    body, positions, lengths = meta.get("bytes"), meta.get("positions"), meta.get("lengths")
    if not all(isinstance(v, int) and v >= 0 for v in (body, positions)) or not isinstance(lengths, list) \
            or not all(isinstance(v, int) and v > 0 for v in lengths) or sum(lengths) != positions:
        return None
    if body != size - len(MAGIC) - 4 - n:
        return None  # truncated, or grown by someone else: never trust the header's size alone
    return meta


def _read(fh, key: str, size: int) -> PrefixState | None:
    meta = _header(fh, key, size)
    if meta is None:
        return None
    body = meta["bytes"]
    data = np.fromfile(fh, dtype=np.uint8, count=body)
    if data.nbytes != body or hashlib.sha256(memoryview(data)).hexdigest() != meta.get("sha256"):
        return None
    return PrefixState(key, meta["positions"], meta["lengths"], data)
