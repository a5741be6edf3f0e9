"""Where each engine runs: CPU and GPU detection, the encoder's device and the LLM offload choice.

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


def system_info() -> str:
    """`info --system`: what llama.cpp and the encoder engines were built with, and the CPU."""
    import ctranslate2
    import llama_cpp

    from importlib.metadata import version

    from .encoder_backends import REGISTRY
    from .encoder_choice import cpu_signature
    from .format import weights
    from .llm import cpu_has_amx, use_extra_bufts
    try:
        cuda = ctranslate2.get_cuda_device_count()
    except Exception:
        cuda = 0
    extra = []
    for b in REGISTRY.values():
        if b.name == "ctranslate2":  # its line is above, with CUDA
            continue
        if not b.installed():
            extra.append(f"{b.name:<11} not installed (no wheel for this platform in the default install; "
                         f"`pip install {b.package}` where one exists)")
            continue
        extra.append(f"{b.name:<11} {version(b.package)}; default compute type here: {b.default_compute_type()}")
    return "\n".join([
        f"llama.cpp   {llama_cpp.__version__}; GPU offload: {bool(llama_cpp.llama_supports_gpu_offload())}",
        f"            {llama_cpp.llama_print_system_info().decode().strip()}",
        f"ctranslate2 {ctranslate2.__version__}; CUDA devices: {cuda}; "
        f"CPU compute types: {', '.join(sorted(ctranslate2.get_supported_compute_types('cpu')))}",
        *extra,
        f"cpu         {cpu_signature()}; AMX: {cpu_has_amx()}; llama.cpp repacks at load: "
        f"{', '.join(q for q in weights.TYPES if weights.TYPES[q].quantized and use_extra_bufts(q)) or 'no type'}",
    ])
