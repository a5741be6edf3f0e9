"""The LLM's weight types, in one table: who writes each GGUF (gguf-py itself, or llama.cpp's
quantizer from an F16 intermediate), the llama.cpp file type, the tensors a recipe keeps at
another type, bits per weight for size estimates, and whether llama.cpp's repacking of the
weights at load pays off. The converter, the runtime, the hub's estimates and every CLI choice
list read it; `--quant NAME` writes llm-NAME.gguf.

Figures behind the choices: docs/performance.md (speed per type and repacking) and
docs/accuracy.md (what each type moves the answers).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightType:
    name: str             # --quant's value; the GGUF is llm-<name>.gguf
    ftype: str            # gguf.LlamaFileType member (llama.cpp's LLAMA_FTYPE_*)
    bits: float           # bits per weight of the whole GGUF (llama.cpp's quantize table)
    quantized: bool       # made by llama.cpp's quantizer; else gguf-py writes it tensor by tensor
    output: str | None = None     # output.weight kept at this KEEP_TYPES key (None: the type's own)
    embedding: str | None = None  # token_embd.weight likewise
    # llama.cpp's extra buffer types (CPU_REPACK) on CPUs without AMX: llama.cpp's default (on)
    # unless measured slower for this type (docs/accuracy.md, 4-bit recipes: q4_k_m prefills
    # 49 rows/s without, 27 with; q4_0 14 without, 32 with); AMX CPUs keep them off.
    repack: bool = True
    # Quantized with an importance matrix from MuFun prompts when the conversion can make one
    # (mufun_local.store.imatrix): measured more accurate at the same size and speed.
    imatrix: bool = False


TYPES: dict[str, WeightType] = {t.name: t for t in (
    WeightType("q4_k_m", "MOSTLY_Q4_K_M", 4.89, True, imatrix=True, repack=False),
    WeightType("q4_0", "MOSTLY_Q4_0", 4.66, True),
    WeightType("iq4_xs", "MOSTLY_IQ4_XS", 4.48, True),
    WeightType("q5_k_m", "MOSTLY_Q5_K_M", 5.70, True),
    WeightType("q8_0", "MOSTLY_Q8_0", 8.50, True),
    WeightType("f16", "MOSTLY_F16", 16.0, False),
    WeightType("bf16", "MOSTLY_BF16", 16.0, False),
    WeightType("f32", "ALL_F32", 32.0, False),
)}

# The weight type when none is asked for: the product is a 4-bit model (what fits a 16 GB
# laptop); among the 4-bit recipes, the most accurate one at full speed (docs/accuracy.md).
DEFAULT = "q4_k_m"
# What --output-type / --embedding-type may keep a matrix at (GGMLQuantizationType names)
KEEP_TYPES = {"q8_0": "Q8_0", "q6_k": "Q6_K", "f16": "F16"}


def get(name: str) -> WeightType:
    """The table's entry; a one-line error naming the choices otherwise."""
    from ..errors import ModelError
    try:
        return TYPES[name]
    except KeyError:
        raise ModelError(f"--quant {name}: choose from {', '.join(TYPES)}") from None


def gguf_name(name: str) -> str:
    return f"llm-{name}.gguf"
