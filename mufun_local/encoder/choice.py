"""`--encoder-backend auto`: the fastest converted, installed backend on this machine.

On CUDA, CTranslate2 (float16). On a CPU, the candidates are each usable backend's default
compute type, which is never less accurate than the original's bfloat16 run (CTranslate2
and ONNX Runtime float32, OpenVINO bfloat16 where the CPU runs bfloat16 natively, else
float32; int8 loses twice what bf16 does and is used only when asked for), or every backend
offering the compute type the user asked for. With
more than one, each runs one 30 s window once and the fastest wins; the figures are kept
in $MUFUN_HOME/encoder-choice.json, keyed on the CPU, threads, encoder size and engine
versions, so the measurement happens once per machine and model size.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from ..devices import cpu_signature, resolve_device
from .backends import GPU_BACKEND, converted, get, load_encoder
from ..errors import ModelError
from ..files import write_text_atomic
from ..format.encoder_dir import EncoderDir
from ..logs import notice

@dataclass
class Choice:
    backend: str
    compute_type: str
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)


def candidates(encoder_dir: Path, compute_type: str | None) -> list[tuple[str, str]]:
    """(backend, compute type) pairs worth measuring on this CPU."""
    out = []
    for b in converted(encoder_dir):
        ct = b.default_compute_type("cpu") if compute_type is None else compute_type
        if b.installed() and ct in b.compute_types and b in converted(encoder_dir, ct):
            out.append((b.name, ct))
    return out


def _versions(backends) -> str:
    out = []
    for b in sorted(set(backends)):
        try:
            out.append(f"{b}={version(b)}")
        except PackageNotFoundError:
            out.append(f"{b}=?")
    return ",".join(out)


def measure(encoder_dir: Path, pairs: list[tuple[str, str]], threads: int, n_mels: int,
            quiet: bool = False) -> dict[str, float]:
    """Seconds for one 30 s window on each (backend, compute type), loading one at a time."""
    rng = np.random.default_rng(0)
    mel = np.clip(rng.standard_normal((1, n_mels, 3000)).astype(np.float32) * 0.4, -1.0, 1.5)
    seconds = {}
    for backend, ct in pairs:
        if not quiet:
            notice(f"encoder: timing {backend} {ct} on one window (once per machine) ...")
        enc = load_encoder(encoder_dir, backend, "cpu", ct, threads, 1)
        enc.hidden_states(mel)  # first call pays lazy allocations
        t0 = time.perf_counter()
        enc.hidden_states(mel)
        seconds[f"{backend} {ct}"] = time.perf_counter() - t0
        del enc
    return seconds


def choose(encoder_dir: str | Path, backend: str = "auto", device: str = "auto", compute_type: str | None = None,
           threads: int = 0, cache_file: Path | None = None, quiet: bool = False) -> Choice:
    """Which backend and compute type to load (measuring once when `auto` has a choice)."""
    encoder_dir = Path(encoder_dir)
    if backend != "auto":
        b = get(backend)
        return Choice(b.name, compute_type or b.default_compute_type(b.device_for(device)), "as requested")
    if resolve_device(device) == "cuda":
        gpu = get(GPU_BACKEND)
        return Choice(gpu.name, compute_type or gpu.default_compute_type("cuda"), "CUDA: CTranslate2 is the GPU backend")
    pairs = candidates(encoder_dir, compute_type)
    if not pairs:
        raise ModelError(f"no converted, installed encoder backend runs compute type {compute_type} "
                         f"(converted: {', '.join(b.name for b in converted(encoder_dir))})")
    if len(pairs) == 1:
        return Choice(*pairs[0], "the only candidate converted and installed for this CPU")

    files = EncoderDir(encoder_dir)
    key = " | ".join([cpu_signature(), f"threads={threads or os.cpu_count()}",
                      f"d={files.d_model}x{files.info.get('layers', '?')}", _versions(b for b, _ in pairs),
                      ",".join(f"{b}:{c}" for b, c in pairs)])
    cache = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    seconds = cache.get(key)
    how = "measured earlier on this machine"
    if seconds is None:
        seconds = measure(encoder_dir, pairs, threads, files.n_mels, quiet)
        how = "measured now"
        if cache_file is not None:
            cache[key] = seconds
            write_text_atomic(cache_file, json.dumps(cache, indent=2) + "\n")
    best = min(seconds, key=seconds.get)
    backend, ct = best.split(" ")
    figures = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(seconds.items(), key=lambda kv: kv[1]))
    return Choice(backend, ct, f"fastest per 30 s window ({how}): {figures}", seconds)
