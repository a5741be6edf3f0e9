"""Read an original MuFun checkpoint (a local directory or a hub id) tensor by tensor.

The release stores bf16 tensors in sharded safetensors files. safetensors' numpy backend
cannot represent bf16 and the converter must not need torch, so shards are read here
from their documented layout (8-byte header length, JSON header, raw little-endian data)
and bf16 is widened to float32 by a 16-bit shift, which is exact. Only the tensor being
converted is ever in memory.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mufun_local.errors import ModelError
from mufun_local.format.checkpoint import dims_from_config, expected_shapes

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
REQUIRED_FILES = ("config.json", "model.safetensors.index.json") + TOKENIZER_FILES
OPTIONAL_FILES = ("added_tokens.json", "special_tokens_map.json", "generation_config.json")

_DTYPES = {"BF16": (np.dtype("<u2"), 2), "F16": (np.dtype("<f2"), 2), "F32": (np.dtype("<f4"), 4)}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


class Checkpoint:
    """A validated original checkpoint: config, dims, and a lazy tensor table."""

    def __init__(self, path: str | os.PathLike, source: str | None = None, revision: str | None = None):
        self.path = Path(path)
        self.source = source or str(self.path)
        self.revision = revision
        if not self.path.is_dir():
            raise ModelError(f"{self.path}: not a checkpoint directory")
        missing = [f for f in REQUIRED_FILES if not (self.path / f).is_file()]
        if missing:
            raise ModelError(f"{self.path}: missing checkpoint file(s): {', '.join(missing)}")
        self.config = self._json("config.json")
        self.dims = dims_from_config(self.config)
        self.generation_config = self._json("generation_config.json") if (self.path / "generation_config.json").is_file() else {}
        self.tensors = self._read_index()
        self._validate()

    def _json(self, name: str) -> dict:
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{self.path / name}: not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None

    def _read_index(self) -> dict[str, TensorInfo]:
        index = self._json("model.safetensors.index.json")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(f"{self.path}/model.safetensors.index.json: no weight_map")
        for shard in weight_map.values():  # flat file names in this folder, nothing else
            if not isinstance(shard, str) or Path(shard).name != shard or shard in (".", "..") \
                    or not shard.endswith(".safetensors"):
                raise ModelError(f"{self.path}/model.safetensors.index.json: {str(shard)[:100]!r} is not "
                                 f"a shard file name in the checkpoint folder")
        table: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            table.update(read_shard_header(self.path / shard))
        for name, shard in weight_map.items():
            if name not in table:
                raise ModelError(f"{shard}: tensor {name} listed in the index is not in the shard")
        return table

    def _validate(self) -> None:
        want = expected_shapes(self.dims)
        missing = [n for n in want if n not in self.tensors]
        if missing:
            more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
            raise ModelError(f"checkpoint is missing tensor(s): {', '.join(missing[:3])}{more}")
        for name, shape in want.items():
            if self.tensors[name].shape != shape:
                raise ModelError(f"tensor {name} has shape {list(self.tensors[name].shape)}, "
                                 f"config.json implies {list(shape)}")

    def _raw(self, name: str) -> tuple[TensorInfo, np.memmap]:
        info = self.tensors[name]
        raw_dtype, _ = _DTYPES[info.dtype]
        count = info.nbytes // raw_dtype.itemsize
        return info, np.memmap(info.file, dtype=raw_dtype, mode="r", offset=info.start, shape=(count,))

    def get(self, name: str, dtype=np.float32, chunk: int = 1 << 24) -> np.ndarray:
        """One tensor as `dtype` (float32 by default; bf16 is widened exactly). Converted in
        chunks from a memory map, so the peak is the result plus one chunk."""
        info, raw = self._raw(name)
        out = np.empty(raw.shape[0], dtype=dtype)
        for s in range(0, raw.shape[0], chunk):
            part = raw[s:s + chunk]
            if info.dtype == "BF16":
                wide = part.astype(np.uint32)
                wide <<= 16
                out[s:s + chunk] = wide.view(np.float32)
            else:
                out[s:s + chunk] = part
        del raw
        return out.reshape(info.shape)

    def get_bf16(self, name: str, chunk: int = 1 << 24) -> np.ndarray:
        """One tensor's bfloat16 bit patterns (uint16): the stored bits when the release is
        bf16 (nothing rounded), else ggml's round-to-nearest-even of each value, by chunks."""
        import gguf
        info, raw = self._raw(name)
        out = np.empty(raw.shape[0], dtype=np.uint16)
        for s in range(0, raw.shape[0], chunk):
            part = raw[s:s + chunk]
            out[s:s + chunk] = part if info.dtype == "BF16" else \
                gguf.quants.quantize(part.astype(np.float32), gguf.GGMLQuantizationType.BF16).view(np.uint16)
        del raw
        return out.reshape(info.shape)

    def nbytes(self, prefix: str = "") -> int:
        return sum(t.nbytes for n, t in self.tensors.items() if n.startswith(prefix))


def read_shard_header(path: Path) -> dict[str, TensorInfo]:
    if not path.is_file():
        raise ModelError(f"{path}: shard listed in the index is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            if hlen > min(size - 8, 100 * 1024 * 1024):
                raise ValueError("header length exceeds the file")
            header = json.loads(fh.read(hlen))
    except (struct.error, ValueError, UnicodeDecodeError):
        raise ModelError(f"{path}: not a safetensors file (corrupt or truncated header)") from None
    base = 8 + hlen
    out: dict[str, TensorInfo] = {}
    if not isinstance(header, dict):
        raise ModelError(f"{path}: not a safetensors file (its header is not a table)")
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            if meta.get("dtype") not in _DTYPES:
                raise ModelError(f"{path}: tensor {name} has unsupported dtype {meta.get('dtype')}")
            start, end = (int(x) for x in meta["data_offsets"])
            shape = tuple(int(x) for x in meta["shape"])
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ModelError(f"{path}: tensor {name[:100]} has a malformed header entry") from None
        if start < 0 or end < start or any(n < 0 for n in shape):
            raise ModelError(f"{path}: tensor {name[:100]} has negative sizes or offsets")
        expect = math.prod(shape) * _DTYPES[meta["dtype"]][1]
        if end - start != expect:
            raise ModelError(f"{path}: tensor {name} has {end - start} bytes for shape {list(shape)}")
        if base + end > size:
            raise ModelError(f"{path}: truncated (tensor {name} ends past the end of the file)")
        out[name] = TensorInfo(path, meta["dtype"], shape, base + start, end - start)
    return out
