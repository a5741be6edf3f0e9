"""Hub ids (Yi3852/MuFun-Base[@revision]): the local Hugging Face cache first, else a
download that says what it costs before it starts.

A checkpoint is 17 GB at the real size, so nothing downloads one silently: `pull` and any
command given a hub id that is not cached print the plan (files, bytes still to fetch, the
conversion's time and size) on stderr, then download with huggingface_hub (its progress bar,
and resumption of an interrupted download from its `.incomplete` files).
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass

from ..errors import ModelError
from ..logs import notice

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+(@[\w./-]+)?")
# What conversion reads: config, index, shards, tokenizer, generation defaults.
PATTERNS = ("*.json", "*.safetensors", "merges.txt", "vocab.json")

# For the estimates only: core-seconds per checkpoint byte, measured with `mufun-local
# convert` of the full-size checkpoint (17.8 GB of bf16 shards) on a 2-core Xeon, the
# encoder-engine timing (72 s) included: F16 148 s; a quantized type 513 s (llama.cpp's
# quantizer pass on top). docs/performance.md.
CORE_SECONDS_PER_BYTE = {"plain": (148 + 72) * 2 / 17.84e9, "quantized": (513 + 72) * 2 / 17.84e9}
# The share of a MuFun checkpoint's parameters that is the Whisper encoder (0.64 of 8.9 B);
# bytes per weight of each part come from format (the encoder's as a default conversion
# writes it). Full size: F16 20.4 GB estimated, 20.6 GB written.
ENCODER_SHARE = 0.073


def is_hub_id(spec: str) -> bool:
    return bool(HUB_ID.fullmatch(spec))


def split(spec: str) -> tuple[str, str | None]:
    repo_id, _, revision = spec.partition("@")
    return repo_id, revision or None


def cached(spec: str) -> str | None:
    """The local snapshot directory of `spec` when every file conversion needs is there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, revision = split(spec)
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=list(PATTERNS), local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class Plan:
    repo_id: str
    revision: str        # the commit the hub resolved
    files: int
    total_bytes: int     # what conversion reads
    missing_bytes: int   # what is not in the local cache yet

    def describe(self, quant: str, cores: int | None = None) -> str:
        cores = max(1, cores or os.cpu_count() or 1)
        from ..format import weights
        from ..format.encoder_dir import bytes_per_weight
        wt = weights.get(quant)
        rate = CORE_SECONDS_PER_BYTE["quantized" if wt.quantized else "plain"]
        seconds = self.total_bytes * rate / cores
        params = self.total_bytes / 2  # bf16 shards
        out = params * ((1 - ENCODER_SHARE) * wt.bits / 8
                        + ENCODER_SHARE * bytes_per_weight("float16", ("ctranslate2", "onnx")))
        fetch = (f"{_gb(self.missing_bytes)} to download" if self.missing_bytes
                 else "already downloaded")
        return (f"{self.repo_id}@{self.revision[:10]}: {self.files} files, {_gb(self.total_bytes)}, {fetch}; "
                f"converting to {quant} then takes about {max(1, round(seconds / 60))} min on {cores} cores "
                f"and writes about {_gb(out)}")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def plan(spec: str) -> Plan:
    """Ask the hub what `spec` holds (one API call, no file download)."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    repo_id, revision = split(spec)
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:  # offline, unknown repo, gated, rate-limited: all one line
        raise _unavailable(repo_id, exc) from None
    files = [s for s in info.siblings or [] if any(fnmatch.fnmatch(s.rfilename, p) for p in PATTERNS)]
    if not any(s.rfilename == "model.safetensors.index.json" for s in files):
        raise ModelError(f"{repo_id}: not a MuFun checkpoint (no model.safetensors.index.json on the hub)")
    missing = sum(s.size or 0 for s in files
                  if not isinstance(try_to_load_from_cache(repo_id, s.rfilename, revision=info.sha), str))
    return Plan(repo_id, info.sha or revision or "main", len(files), sum(s.size or 0 for s in files), missing)


def download(spec: str, quant: str, quiet: bool = False) -> str:
    """The local snapshot of `spec`: from the cache, else downloaded after saying what it costs."""
    local = cached(spec)
    if local:
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    p = plan(spec)
    notice(f"downloading {p.describe(quant)} (`mufun-local pull` does this ahead of time)")
    was_disabled = are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        return snapshot_download(p.repo_id, revision=p.revision, allow_patterns=list(PATTERNS))
    except Exception as exc:
        raise _unavailable(p.repo_id, exc) from None
    finally:
        if quiet and not was_disabled:
            enable_progress_bars()


def fetch_checkpoint(spec: str, quant: str, quiet: bool = False) -> tuple[str, str, str]:
    """A hub id's local snapshot (the converter's `fetch`): (directory, repo id, revision);
    one line when `spec` is not a hub id."""
    if not is_hub_id(spec):
        raise ModelError(f"{spec}: not a checkpoint directory or a hub id like Yi3852/MuFun-Base")
    local = download(spec, quant, quiet=quiet)
    return local, split(spec)[0], os.path.basename(local)


def _unavailable(repo_id: str, exc: Exception) -> ModelError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError)):
        return ModelError(f"{repo_id}: {type(exc).__name__} on the Hugging Face hub (check the id, or `hf auth login`)")
    return ModelError(
        f"{repo_id}: not in the local Hugging Face cache and cannot be downloaded ({type(exc).__name__}); "
        f"on a machine that is online run `mufun-local pull {repo_id}` (or `hf download {repo_id}`), "
        f"or pass a local checkpoint directory with --model")
