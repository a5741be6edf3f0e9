"""A converted model directory and its manifest: locate, validate, describe.

Layout written by ``mufun-local convert``::

    manifest.json            format version, source, dims, prompt, stop ids, hashes
    encoder/                 frontend.npz, encoder.json; seg0..2/ (three CTranslate2 models)
                             and/or onnx/ (one ONNX graph, float32 and int8)
    connector.safetensors    the MLP in float32
    llm-<quant>.gguf         Qwen3 + tokenizer for llama.cpp

The converter writes it, the runtime reads it; both through this module (format/).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .encoder_dir import EncoderDir

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under root except the manifest, by relative path."""
    return {
        str(p.relative_to(root)): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST
    }


@dataclass
class ModelDir:
    """A converted model directory with its parsed manifest."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> "ModelDir":
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise ModelError(f"{path}: not a converted model (no {MANIFEST}); "
                             f"create one with `mufun-local convert CHECKPOINT {path}`")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{mpath}: damaged ({exc.msg})") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{path}: model format {manifest.get('format_version')} is not "
                             f"supported by this version (needs {FORMAT_VERSION}); convert it again")
        md = cls(path, manifest)
        md.check_files()
        return md

    def check_files(self) -> None:
        """Every listed file exists with its recorded size (cheap; --verify hashes)."""
        for rel, meta in self.manifest["files"].items():
            p = self.path / rel
            if not p.is_file():
                raise ModelError(f"{self.path}: missing model file {rel}")
            if p.stat().st_size != meta["size"]:
                raise ModelError(f"{self.path}: {rel} has {p.stat().st_size} bytes, "
                                 f"expected {meta['size']} (truncated or replaced)")

    def verify(self) -> list[str]:
        """Files whose sha256 differs from the manifest."""
        return [rel for rel, meta in self.manifest["files"].items()
                if sha256_file(self.path / rel) != meta["sha256"]]

    def sampling_defaults(self) -> dict:
        """temperature / top_p / top_k from the checkpoint's generation_config.json."""
        gen = self.manifest.get("generation", {})
        return {"temperature": float(gen.get("temperature", 0.0)) if gen.get("do_sample", True) else 0.0,
                "top_p": float(gen.get("top_p", 1.0)), "top_k": int(gen.get("top_k", 0))}


    @property
    def encoder_dir(self) -> Path:
        return self.path / self.manifest["encoder"]["dir"]

    @property
    def encoder(self) -> EncoderDir:
        return EncoderDir(self.encoder_dir)

    @property
    def connector_file(self) -> Path:
        return self.path / self.manifest["connector"]["file"]

    @property
    def llm_file(self) -> Path:
        return self.path / self.manifest["llm"]["file"]

    @property
    def llm_sha256(self) -> str:
        """The GGUF's sha256 from the manifest (identifies the LLM for the prefix cache)."""
        return self.manifest["files"][self.manifest["llm"]["file"]]["sha256"]

    @property
    def audio_hash(self) -> str:
        """Identifies the encoder + connector weights (for the audio-embedding cache)."""
        files = self.manifest["files"]
        parts = sorted(f"{k}:{v['sha256']}" for k, v in files.items()
                       if k.startswith(self.manifest["encoder"]["dir"]) or k == self.manifest["connector"]["file"])
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def describe(md: ModelDir) -> str:
    m = md.manifest
    dims, llm, enc = m["dims"], m["llm"], m["encoder"]
    total = sum(f["size"] for f in m["files"].values())
    onnx = "float32" + (", int8" if any(k.endswith("encoder.int8.onnx") for k in m["files"]) else "") \
        + (", OpenVINO 16-bit" if any(k.endswith("encoder.openvino.xml") for k in m["files"]) else "")
    mix = "".join(f", {name} {llm[key]}" for key, name in (("output_type", "output"), ("embedding_type", "embeddings"))
                  if llm.get(key)) + (f", importance matrix from {llm['imatrix']}" if llm.get("imatrix") else "")
    lines = [
        f"model      {md.path}",
        f"source     {m['source']['id']}" + (f" @ {m['source']['revision']}" if m['source'].get('revision') else ""),
        f"encoder    Whisper d={dims['enc_d']} layers={dims['enc_layers']} heads={dims['enc_heads']} "
        f"mels={dims['n_mels']}; hidden states {enc['feature_layers']}; "
        + ", ".join(f"{b} ({enc['stored_quantization']})" if b == "ctranslate2" else f"{b} ({onnx})"
                    for b in enc.get("backends", ["ctranslate2"])),
        f"connector  {dims['connector_in']} -> {dims['connector_mid']} -> {dims['hidden']}, "
        f"pool stride {m['connector']['pool_stride']} ({m['connector']['tokens_per_window']} tokens / 30 s)",
        f"llm        Qwen3 {llm['quant']}{mix}: hidden={dims['hidden']} layers={dims['llm_layers']} "
        f"heads={dims['llm_heads']}/{dims['llm_kv_heads']} vocab={dims['vocab_rows']}",
        f"stop ids   {m['stop_ids']}",
        f"generation {m['generation']}",
        "written by " + ", ".join(f"{k} {v}" for k, v in m["tools"].items()),
        f"files      {len(m['files'])}, {total / 1e6:.1f} MB",
    ]
    return "\n".join(lines)
