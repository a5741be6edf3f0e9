"""The encoder engines as data: each declares its name, the artifact `convert` writes for
it, its compute types and devices, how to tell it is installed, and its default compute
type. Loading goes through here and choosing (encoder_choice.py) reads it; the engines' own
modules (encoder_ct2.py, encoder_onnx.py) depend only on encoder.py, and read their files
through the model format's EncoderDir (format/encoder_dir.py).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..devices import resolve_device
from .base import EncoderBase
from ..errors import ModelError
from ..format.encoder_dir import EncoderDir


def _float_default(device: str) -> str:
    """float16 on CUDA, float32 on a CPU: both no less accurate than the original's bf16."""
    return "float16" if device == "cuda" else "float32"


def _openvino_default(device: str) -> str:
    """bfloat16 where the CPU runs it natively (AVX512-BF16 or AMX), else float32."""
    from .onnx_engine import openvino_bf16
    return "bfloat16" if openvino_bf16() else "float32"


@dataclass(frozen=True)
class Backend:
    name: str                   # --encoder-backend
    artifact: str               # what `convert --encoder-backends` writes for it
    compute_types: tuple[str, ...]
    devices: tuple[str, ...]
    package: str                # the Python package that must import
    module: str                 # where its EncoderBase subclass lives
    cls: str
    # The most accurate fast type, never less accurate than the original's bfloat16 run
    # (docs/accuracy.md: first-step logits vs float32 on a 112 s song: original bf16 0.24,
    # OpenVINO bf16 0.015, float32 exact; int8 0.49, so int8 is only ever asked for).
    default: Callable[[str], str] = _float_default
    # Whether a model's encoder folder has the file this engine reads for a compute type
    # (ONNX Runtime's int8 graph is written only with --onnx-int8)
    has_files: Callable[[EncoderDir, str], bool] = lambda files, compute_type: True

    def installed(self) -> bool:
        try:
            importlib.import_module(self.package)
            return True
        except ImportError:
            return False

    def default_compute_type(self, device: str = "cpu") -> str:
        return self.default(device)

    def device_for(self, device: str) -> str:
        """The device it runs on for --device (auto: CUDA when this engine can use it)."""
        if "cuda" not in self.devices:
            if device == "cuda":
                raise ModelError(f"--encoder-backend {self.name} runs on the CPU here; use --device cpu "
                                 f"or --encoder-backend ctranslate2 for CUDA")
            return "cpu"
        return resolve_device(device)


_CT2_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("ctranslate2", "ctranslate2", _CT2_TYPES, ("cpu", "cuda"), "ctranslate2", ".ct2_engine", "CT2Encoder"),
    Backend("onnxruntime", "onnx", ("int8", "float32"), ("cpu",), "onnxruntime", ".onnx_engine",
            "OnnxRuntimeEncoder", has_files=EncoderDir.has_onnx),
    Backend("openvino", "onnx", ("bfloat16", "float32"), ("cpu",), "openvino", ".onnx_engine", "OpenVinoEncoder",
            _openvino_default),
)}
BACKENDS = tuple(REGISTRY)
GPU_BACKEND = "ctranslate2"   # `auto` on CUDA
ALL_COMPUTE_TYPES = tuple(sorted({t for b in REGISTRY.values() for t in b.compute_types}))


def get(name: str) -> Backend:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown encoder backend {name!r}: choose from auto, {', '.join(BACKENDS)}") from None


def converted(encoder_dir: str | Path, compute_type: str | None = None) -> list[Backend]:
    """The backends whose artifacts this model directory holds (for `compute_type`, when
    given: the files that type reads)."""
    files = EncoderDir(encoder_dir)
    written = set(files.artifacts)
    return [b for b in REGISTRY.values() if b.artifact in written
            and (compute_type is None or b.has_files(files, compute_type))]


def load_encoder(encoder_dir: str | Path, backend: str, device: str = "cpu", compute_type: str | None = None,
                 threads: int = 0, batch_size: int = 4) -> EncoderBase:
    """One concrete backend (not `auto`: see encoder_choice.choose)."""
    b = get(backend)
    if b not in converted(encoder_dir):
        raise ModelError(f"this model has no {b.artifact} encoder for --encoder-backend {b.name}; "
                         f"convert it again with --encoder-backends ctranslate2,{b.artifact}")
    device = b.device_for(device)
    compute_type = compute_type or b.default_compute_type(device)
    if compute_type not in b.compute_types:
        raise ModelError(f"compute type {compute_type!r} on {b.name}: choose from {', '.join(b.compute_types)}")
    if not b.installed():
        raise ModelError(f"--encoder-backend {b.name}: {b.package} is not installed (it has no wheel for this "
                         f"platform in the default install; `pip install {b.package}` where one exists)")
    cls = getattr(importlib.import_module(b.module, __package__), b.cls)
    return cls(encoder_dir, device, compute_type, threads, batch_size)
