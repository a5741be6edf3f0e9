"""Where each engine runs: the CPU's facts (read once from /proc/cpuinfo), GPU detection, the encoder's device and the LLM offload choice.

`--n-gpu-layers` defaults to "auto": every layer on the GPU when the weights plus the KV
cache fit in free VRAM, otherwise as many layers as fit (the rest stay on the CPU), and 0
when llama.cpp was built without a GPU backend.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from .errors import ModelError

VRAM_RESERVE = 512 * 1024**2  # CUDA context, scratch buffers, the encoder's activations


@dataclass(frozen=True)
class Offload:
    n_gpu_layers: int
    reason: str


def cpu_info(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    """(model name, feature flags) from /proc/cpuinfo (or its text); ("", set()) elsewhere."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return "", set()
    name, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, flags


CPU_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2")


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """True when /proc/cpuinfo lists an AMX flag (Linux; elsewhere False)."""
    return any(f.startswith("amx") for f in cpu_info(cpuinfo)[1])


def cpu_signature() -> str:
    """CPU model name and the matrix-unit flags that decide which encoder engine is fastest."""
    import os
    import platform

    name, flags = cpu_info()
    name = name or platform.processor() or platform.machine()
    return f"{name} [{' '.join(f for f in CPU_FLAGS if f in flags)}] x{os.cpu_count()}"


def ct2_cuda() -> bool:
    """Whether CTranslate2 (the encoder's GPU engine) sees a CUDA device."""
    import ctranslate2
    try:
        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # a CPU-only build can raise instead of answering 0
        return False


def torch_cuda() -> bool:
    """Whether torch is installed with CUDA and sees a GPU (the connector's GPU path)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    """--device for the encoder: auto is CUDA when CTranslate2 sees one."""
    if device == "auto":
        return "cuda" if ct2_cuda() else "cpu"
    if device == "cuda" and not ct2_cuda():
        raise ModelError("--device cuda: no CUDA device is visible to CTranslate2 "
                         "(install its CUDA build and a driver, or use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"unknown device {device!r}: use cpu, cuda or auto")
    return device


def free_vram_bytes() -> int | None:
    """Free memory of GPU 0, from nvidia-smi (or torch when it has CUDA); None if unknown."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            return int(out.split()[0]) * 1024**2
        except (subprocess.SubprocessError, ValueError, IndexError, OSError):
            pass
    if torch_cuda():
        import torch
        return int(torch.cuda.mem_get_info()[0])
    return None


def choose_offload(requested: int, n_layers: int, weights_bytes: int, kv_bytes: int,
                   gpu_backend: bool, free_bytes: int | None) -> Offload:
    """How many LLM layers go to the GPU. `requested` >= 0 is the user's explicit choice."""
    if requested >= 0:
        if requested > 0 and not gpu_backend:
            return Offload(0, "llama.cpp was built without a GPU backend; running on the CPU")
        return Offload(min(requested, n_layers + 1), "as requested")
    if not gpu_backend:
        return Offload(0, "llama.cpp has no GPU backend (CPU build)")
    if free_bytes is None:
        return Offload(n_layers + 1, "GPU backend present, free VRAM unknown: offloading every layer")
    need = weights_bytes + kv_bytes + VRAM_RESERVE
    if need <= free_bytes:
        return Offload(n_layers + 1, f"all {n_layers} layers fit ({need / 1e9:.1f} GB of {free_bytes / 1e9:.1f} GB free)")
    per_layer = (weights_bytes + kv_bytes) / (n_layers + 1)
    fit = int(max(0, free_bytes - VRAM_RESERVE) // per_layer)
    fit = min(fit, n_layers)
    return Offload(fit, f"{fit} of {n_layers} layers fit in {free_bytes / 1e9:.1f} GB free VRAM "
                        f"(the model needs {need / 1e9:.1f} GB); the rest run on the CPU")


def kv_cache_bytes(n_ctx: int, n_layers: int, n_kv_heads: int, head_dim: int, bytes_per: int = 2) -> int:
    return 2 * n_ctx * n_layers * n_kv_heads * head_dim * bytes_per
