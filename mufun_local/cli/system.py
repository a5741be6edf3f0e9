"""`mufun-local info --system`: what the engines were built with, and the CPU."""
from __future__ import annotations


def system_info() -> str:
    """`info --system`: what llama.cpp and the encoder engines were built with, and the CPU."""
    import ctranslate2
    import llama_cpp

    from importlib.metadata import version

    from ..devices import cpu_has_amx, cpu_signature
    from ..encoder.backends import REGISTRY
    from ..format import weights
    from ..llm.llama import use_extra_bufts
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
