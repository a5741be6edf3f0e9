"""On-disk cache of audio embeddings, bounded in size, least recently used out first.

Encoding is the slow part of a repeated question about the same song. The key covers
everything the embeddings depend on: the audio file's content (not its name), the segs,
the model's encoder + connector weights, and the encoder compute type.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .. import lru
from ..format.model_dir import sha256_file

DEFAULT_LIMIT_MB = 2048


def file_hash(path: str) -> str:
    return sha256_file(Path(path))


def content_hash(source) -> str:
    """A source's content hash (audio.in_memory's forms): a file's or its bytes' sha256 (the
    same for a file and an upload of it); for samples, of their float32 bytes, apart."""
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    if isinstance(source, np.ndarray):
        return hashlib.sha256(b"samples-16k-f32:" + np.ascontiguousarray(source, np.float32).tobytes()).hexdigest()
    return file_hash(os.fspath(source))


class EmbeddingCache:
    def __init__(self, root: Path, limit_bytes: int | None = None):
        self.root = Path(root)
        if limit_bytes is None:
            limit_bytes = int(float(os.environ.get("MUFUN_EMBED_CACHE_MB", DEFAULT_LIMIT_MB)) * 1024 * 1024)
        self.limit = limit_bytes

    @staticmethod
    def key(content_hash: str, segs, model_hash: str, compute_type: str) -> str:
        seg = "full" if segs is None else f"{float(segs[0])!r}:{float(segs[1])!r}"
        return hashlib.sha256(f"{content_hash}|{seg}|{model_hash}|{compute_type}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self._path(key)
        try:
            emb = np.load(p)
        except (OSError, ValueError, EOFError):  # missing, damaged, or empty
            return None
        lru.touch(p)
        return emb

    def put(self, key: str, emb: np.ndarray) -> None:
        p = self._path(key)
        if lru.put_or_skip(p, lambda fh: np.save(fh, np.ascontiguousarray(emb, dtype=np.float32)), "embedding cache"):
            self.evict()

    def evict(self) -> None:
        lru.evict(self.root, "*/*.npy", self.limit)


class MemoryCache:
    """The last few files' embeddings, with the disk cache's get/put interface."""

    def __init__(self, entries: int = 4):
        self.entries = entries
        self.data: OrderedDict[str, object] = OrderedDict()

    def get(self, key):
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        return None

    def put(self, key, emb) -> None:
        self.data[key] = emb
        while len(self.data) > self.entries:
            self.data.popitem(last=False)
