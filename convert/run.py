"""`mufun-local convert SRC OUT`: every artifact, written to a temporary sibling, renamed at the end."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mufun_local import modeldir
from mufun_local.errors import ModelError
from mufun_local.logs import notice
from mufun_local.prompt import TEMPLATES, variant_of

from .checkpoint import Checkpoint, resolve_source
from .connector import write_connector
from .encoder import ENCODER_ARTIFACTS, ENCODER_QUANTS, write_encoder
from .llm_gguf import KEEP_TYPES, WRITTEN, load_vocab, quantize, write_gguf


def check_out(out: Path, src: Path | None, force: bool) -> None:
    """Refuse an OUT whose replacement could lose data: the checkpoint itself, a folder
    holding it or inside it, or (with --force) anything that is not a converted model."""
    o, s = out.resolve(), src.resolve() if src is not None else None
    if s is not None and (o == s or o in s.parents or s in o.parents):
        raise ModelError(f"{out}: OUT must be outside the checkpoint {src} (and not hold it)")
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise ModelError(f"{out} already exists (use --force to replace it)")
    if out.is_symlink() or not out.is_dir():
        raise ModelError(f"{out}: is not a model directory; --force replaces only a converted model")
    if any(out.iterdir()) and not (out / modeldir.MANIFEST).is_file():
        raise ModelError(f"{out}: not a converted model (no {modeldir.MANIFEST}); "
                         f"--force replaces only a converted model or an empty folder")


def _remove_stale(out: Path) -> None:
    """Remove what a killed conversion to `out` left: `.OUT.partial-PID` whose process is
    gone, and `.OUT.old-PID` once a model is at `out` (otherwise that is the user's only
    copy: kept). A running conversion's folder is left alone."""
    import re
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(partial|old)-(\d+)")
    for p in out.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if not m or not p.is_dir() or p.is_symlink() or _alive(int(m.group(2))):
            continue
        if m.group(1) == "partial" or (out / modeldir.MANIFEST).is_file():
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier try of this very process, or a reused pid: not running now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _replace(new: Path, out: Path) -> None:
    """Put `new` at `out`: the old model is moved aside first and removed only once the new
    one is in place (put back if that fails)."""
    if not out.exists():
        new.rename(out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _tool_versions() -> dict[str, str]:
    out = {}
    for pkg in ("mufun-local", "ctranslate2", "onnx", "onnxruntime", "gguf", "llama-cpp-python", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def default_encoder_backends() -> tuple[str, ...]:
    """CTranslate2 always; the ONNX graph too where onnx and ONNX Runtime are installed (a
    plain install has them on every platform with wheels: see pyproject.toml)."""
    from importlib.util import find_spec
    return ("ctranslate2", "onnx") if find_spec("onnx") and find_spec("onnxruntime") else ("ctranslate2",)


def _usual_modes(root: Path) -> None:
    """Some writers (safetensors, ONNX Runtime's quantizer) create files 0600; a model
    directory others may share gets the modes the umask gives."""
    mask = os.umask(0)
    os.umask(mask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _generation_defaults(gen: dict) -> dict:
    keys = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "do_sample")
    return {k: gen[k] for k in keys if k in gen}


def _bar(desc: str, quiet: bool):
    from tqdm import tqdm
    bar = tqdm(desc=desc, total=1, unit="step", file=sys.stderr, disable=quiet, leave=True,
               bar_format="{desc:<22} {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
    return bar, update


def _check_options(quant, encoder_quant, encoder_backends, output_type, embedding_type) -> None:
    if quant not in modeldir.LLM_QUANTS:
        raise ModelError(f"--quant {quant}: choose from {', '.join(modeldir.LLM_QUANTS)}")
    for flag, kind in (("--output-type", output_type), ("--embedding-type", embedding_type)):
        if kind is not None and (kind not in KEEP_TYPES or quant in WRITTEN):
            raise ModelError(f"{flag} {kind}: give q8_0 or f16, with a quantized --quant (q4_k_m, q5_k_m, q8_0)")
    if encoder_quant not in ENCODER_QUANTS:
        raise ModelError(f"--encoder-quant {encoder_quant}: choose from {', '.join(ENCODER_QUANTS)}")
    if not encoder_backends or set(encoder_backends) - set(ENCODER_ARTIFACTS):
        raise ModelError(f"--encoder-backends {','.join(encoder_backends)}: "
                         f"give one or more of {', '.join(ENCODER_ARTIFACTS)}, comma-separated")


def _write_llm(ckpt, tmp: Path, vocab, quant, keep_f16, threads, quiet, verbose, log, output_type,
               embedding_type) -> dict:
    """llm-<quant>.gguf (via an F16 GGUF and llama.cpp's quantizer unless gguf-py writes the
    type itself); its manifest entry."""
    name = f"llm-{quant}.gguf"
    base = quant if quant in WRITTEN else "f16"
    base_path = tmp / (name if quant in WRITTEN else "llm-f16.gguf")
    bar, upd = _bar(f"llm ({base})", quiet)
    write_gguf(ckpt, base_path, base, vocab, progress=upd)
    bar.close()
    if quant not in WRITTEN:
        log(f"quantizing to {quant} with llama.cpp ...")
        quantize(base_path, tmp / name, quant, threads, verbose, output_type, embedding_type)
        if not keep_f16:
            base_path.unlink()
    return {"file": name, "quant": quant,
            **{k: v for k, v in (("output_type", output_type), ("embedding_type", embedding_type)) if v},
            **({"f16_file": "llm-f16.gguf"} if keep_f16 and quant not in WRITTEN else {})}


def convert(src: str | Checkpoint, out: str | os.PathLike, quant: str = modeldir.DEFAULT_QUANT,
            encoder_quant: str = "float16", encoder_backends=None, force: bool = False, keep_f16: bool = False,
            threads: int = 0, quiet: bool = False, verbose: bool = False,
            template: str = "auto", onnx_int8: bool = False,
            output_type: str | None = None, embedding_type: str | None = None) -> Path:
    """Convert `src` (directory or hub id) into a model directory at `out`; returns its path.
    `output_type` / `embedding_type` keep lm_head / the token embeddings at q8_0 or f16 in a
    quantized GGUF (README, Accuracy: what each mix costs)."""
    log = (lambda msg: None) if quiet else notice
    encoder_backends = default_encoder_backends() if encoder_backends is None else tuple(encoder_backends)
    _check_options(quant, encoder_quant, encoder_backends, output_type, embedding_type)
    out = Path(out)
    t0 = time.perf_counter()
    local = Path(src.path if isinstance(src, Checkpoint) else src)
    check_out(out, local if local.is_dir() else None, force)  # before a download
    ckpt = src if isinstance(src, Checkpoint) else resolve_source(str(src), quant, quiet)
    check_out(out, Path(ckpt.path), force)
    d = ckpt.dims
    vocab = load_vocab(ckpt.path, d.vocab_rows)  # the tokenizer is checked before any long work
    special = vocab[3]
    variant = variant_of(f"{ckpt.source} {ckpt.path.name}", ckpt.config) if template == "auto" else template
    if variant not in TEMPLATES:
        raise ModelError(f"--template {template}: choose from auto, {', '.join(TEMPLATES)}")
    log(f"converting {ckpt.source}: encoder d={d.enc_d} x{d.enc_layers}, "
        f"LLM hidden={d.hidden} x{d.llm_layers}, vocab {d.vocab_rows}, template {variant}")

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        bar, upd = _bar("encoder", quiet)
        enc = write_encoder(ckpt, tmp / "encoder", encoder_quant, encoder_backends, progress=upd, onnx_int8=onnx_int8)
        bar.close()
        conn = write_connector(ckpt, tmp / "connector.safetensors")

        llm = _write_llm(ckpt, tmp, vocab, quant, keep_f16, threads, quiet, verbose, log, output_type,
                         embedding_type)
        stop_ids = [i for i in (special["im_end"], special["endoftext"]) if i is not None]
        manifest = {
            "format_version": modeldir.FORMAT_VERSION,
            "source": {"id": str(ckpt.source), "revision": ckpt.revision},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tools": _tool_versions(),
            "dims": asdict(d),
            "encoder": {"dir": "encoder", "backends": enc["artifacts"], "feature_layers": enc["feature_layers"],
                        **({"stored_quantization": encoder_quant} if "ctranslate2" in encoder_backends else {})},
            "connector": conn,
            "llm": llm,
            "prompt": TEMPLATES[variant].manifest_entry(),
            "stop_ids": stop_ids,
            "generation": _generation_defaults(ckpt.generation_config),
            "files": modeldir.hash_tree(tmp),
        }
        (tmp / modeldir.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _usual_modes(tmp)
        check_out(out, Path(ckpt.path), force)  # OUT may have changed during the long work
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f["size"] for f in manifest["files"].values())
    log(f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return out
