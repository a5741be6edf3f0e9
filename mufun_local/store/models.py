"""Model resolution and the model cache: a user names a model, this finds or makes it.

`--model` / MUFUN_MODEL accepts, in order: a converted directory; an original checkpoint
directory (converted on first use into the cache); a hub id such as Yi3852/MuFun-Base
(local huggingface_hub cache first, then a download that says its size first: mufun_local.store.hub;
then converted). `pull` does the last ahead of time. A second process
asking for the same conversion waits on a file lock instead of converting twice.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from ..format import weights
from ..format.model_dir import MANIFEST, ModelDir
from ..errors import ModelError
from .hub import is_hub_id
from ..logs import notice
from ..paths import models_dir

DEFAULT_MODEL = "Yi3852/MuFun-Base"


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors.index.json").is_file()


def _cache_name(label: str, quant: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", label).strip("-")
    return f"{safe}-{quant}"


def _cached_other_types(label: str, quant: str) -> list[str]:
    """The weight types other than `quant` that the cache holds of `label` (a cached model's
    folder name ends in its type, so a new default does not reach the old conversions)."""
    return [q for q in weights.TYPES if q != quant and (models_dir() / _cache_name(label, q) / MANIFEST).is_file()]


def _convert_cached(src: str, label: str, quant: str, quiet: bool = False) -> ModelDir:
    from filelock import FileLock

    target = models_dir() / _cache_name(label, quant)
    if (target / MANIFEST).is_file():
        return ModelDir.open(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MANIFEST).is_file():  # another process converted it while we waited
            return ModelDir.open(target)
        from ..convert.read_checkpoint import Checkpoint
        from ..convert.run import convert, default_encoder_backends
        from .hub import fetch_checkpoint
        from .imatrix import calibrator
        if os.path.isdir(src):
            ckpt = Checkpoint(src)
        else:  # says what a download costs before it starts
            ckpt = Checkpoint(*fetch_checkpoint(src, quant, quiet))
        if not quiet:
            others = _cached_other_types(label, quant)
            if others:
                notice(f"{src} is cached as {', '.join(others)}, not {quant}; `--model "
                       f"{models_dir() / _cache_name(label, others[0])}` uses that one")
            notice(f"converting {src} into {target} (once) ...")
        convert(ckpt, target, quant=quant, encoder_backends=default_encoder_backends(), force=True, quiet=quiet,
                calibrate=calibrator())
    return ModelDir.open(target)


def resolve(spec: str | None = None, quant: str = weights.DEFAULT, quiet: bool = False) -> ModelDir:
    spec = spec or os.environ.get("MUFUN_MODEL") or DEFAULT_MODEL
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return ModelDir.open(path)
        if _is_checkpoint(path):
            digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
            return _convert_cached(str(path), f"{path.name}-{digest}", quant, quiet)
        raise ModelError(f"{path}: neither a converted model nor an original MuFun checkpoint")
    if path.exists():
        raise ModelError(f"{path}: not a model directory")
    if not is_hub_id(spec):
        raise ModelError(f"{spec}: no such model directory, and not a hub id like {DEFAULT_MODEL}")
    return _convert_cached(spec, spec, quant, quiet)


def pull(spec: str | None, quant: str = weights.DEFAULT, quiet: bool = False) -> tuple[ModelDir, bool]:
    """Download (unless cached) and convert a hub id into the model cache, where `--model ID`
    finds it. Returns the model and whether it was already there."""
    spec = spec or os.environ.get("MUFUN_MODEL") or DEFAULT_MODEL
    if not is_hub_id(spec) or Path(spec).expanduser().exists():
        raise ModelError(f"{spec}: `pull` takes a hub id like {DEFAULT_MODEL}; a local checkpoint directory "
                         f"converts with `mufun-local convert`")
    target = models_dir() / _cache_name(spec, quant)
    had = (target / MANIFEST).is_file()
    return _convert_cached(spec, spec, quant, quiet), had


def list_cached() -> list[tuple[str, int]]:
    root = models_dir()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if (d / MANIFEST).is_file():
            out.append((d.name, sum(p.stat().st_size for p in d.rglob("*") if p.is_file())))
    return out


def remove_cached(name: str) -> int:
    target = models_dir() / name
    if not (target / MANIFEST).is_file() or target.parent != models_dir():
        raise ModelError(f"{name}: no such cached model (see `mufun-local models`)")
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    shutil.rmtree(target)
    Path(str(target) + ".lock").unlink(missing_ok=True)
    return size
