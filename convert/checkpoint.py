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
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mufun_local.errors import ModelError
from mufun_local.modeldir import DEFAULT_QUANT

from .tensors import expected_shapes

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


@dataclass(frozen=True)
class Dims:
    """Every size the converter and runtime need, read from config.json."""

    enc_d: int
    enc_layers: int
    enc_heads: int
    enc_ffn: int
    n_mels: int
    enc_positions: int
    enc_ln_eps: float
    connector_in: int
    connector_mid: int
    hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    head_dim: int
    llm_ffn: int
    vocab_rows: int
    rope_theta: float
    rms_eps: float
    max_positions: int
    tokenizer_max_length: int | None


# Bounds on every size config.json gives, far beyond any real release (Qwen3-235B has 94
# layers, hidden 4096, vocab 151,936): a hostile config cannot make the converter plan
# millions of tensors or allocate without limit before the shapes are checked.
DIM_LIMITS = {"enc_d": 16384, "enc_layers": 256, "enc_heads": 256, "enc_ffn": 131072, "n_mels": 512,
              "enc_positions": 65536, "connector_in": 131072, "connector_mid": 1 << 20, "hidden": 65536,
              "llm_layers": 1024, "llm_heads": 1024, "llm_kv_heads": 1024, "head_dim": 4096, "llm_ffn": 1 << 20,
              "vocab_rows": 1 << 22, "max_positions": 1 << 24}


def check_dims(d: Dims) -> Dims:
    for name, limit in DIM_LIMITS.items():
        value = getattr(d, name)
        if not 1 <= value <= limit:
            raise ModelError(f"config.json: {name} = {value} is outside 1..{limit}")
    if d.llm_heads % d.llm_kv_heads:
        raise ModelError(f"config.json: {d.llm_heads} attention heads are not a multiple of "
                         f"{d.llm_kv_heads} key/value heads")
    return d


def dims_from_config(cfg: dict) -> Dims:
    try:
        v, t = cfg["vision_config"], cfg["text_config"]
        m = re.findall(r"(\d+)[ix]", cfg["connector_type"])
        ix, hx = (int(m[0]), int(m[1])) if len(m) == 2 else (None, None)
        if ix is None:
            raise ModelError(f"config.json: unsupported connector_type {cfg['connector_type']!r}")
        vdim = int(cfg.get("vision_hidden_size", v["d_model"])) * ix
        return check_dims(Dims(
            enc_d=int(v["d_model"]), enc_layers=int(v["encoder_layers"]),
            enc_heads=int(v["encoder_attention_heads"]), enc_ffn=int(v["encoder_ffn_dim"]),
            n_mels=int(v.get("num_mel_bins", 128)), enc_positions=int(v.get("max_source_positions", 1500)),
            enc_ln_eps=1e-5,
            connector_in=vdim, connector_mid=hx * vdim, hidden=int(t["hidden_size"]),
            llm_layers=int(t["num_hidden_layers"]), llm_heads=int(t["num_attention_heads"]),
            llm_kv_heads=int(t.get("num_key_value_heads", t["num_attention_heads"])),
            head_dim=int(t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]),
            llm_ffn=int(t["intermediate_size"]), vocab_rows=int(t["vocab_size"]),
            rope_theta=float(t.get("rope_theta", 1e6)), rms_eps=float(t.get("rms_norm_eps", 1e-6)),
            max_positions=int(t.get("max_position_embeddings", 32768)),
            tokenizer_max_length=cfg.get("tokenizer_model_max_length"),
        ))
    except (KeyError, TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        raise ModelError(f"config.json: missing or invalid key {exc}") from None


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


def resolve_source(src: str, quant: str = DEFAULT_QUANT, quiet: bool = False) -> Checkpoint:
    """A local directory, or a hub id: the local Hugging Face cache first, else a download
    that first says what it costs (mufun_local.hub; `quant` is for that estimate)."""
    from mufun_local import hub

    if os.path.isdir(src):
        return Checkpoint(src)
    if os.path.exists(src) or not hub.is_hub_id(src):
        raise ModelError(f"{src}: not a checkpoint directory or a hub id like Yi3852/MuFun-Base")
    local = hub.download(src, quant, quiet=quiet)
    return Checkpoint(local, source=hub.split(src)[0], revision=Path(local).name)
