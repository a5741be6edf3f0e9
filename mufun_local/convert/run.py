"""`mufun-local convert SRC OUT`: every artifact, written to a temporary sibling, renamed at the end."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mufun_local.format import model_dir
from mufun_local import diskspace
from mufun_local.errors import ModelError
from mufun_local.format import weights
from mufun_local.format.encoder_dir import bytes_per_weight
from mufun_local.logs import notice
from mufun_local.format.templates import TEMPLATES, variant_of

from .read_checkpoint import Checkpoint
from .write_connector import write_connector
from .write_encoder import ENCODER_ARTIFACTS, ENCODER_QUANTS, write_encoder
from .write_gguf import load_vocab, quantize, write_gguf
from mufun_local.format.checkpoint import gguf_map



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
    if any(out.iterdir()) and not (out / model_dir.MANIFEST).is_file():
        raise ModelError(f"{out}: not a converted model (no {model_dir.MANIFEST}); "
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
        if m.group(1) == "partial" or (out / model_dir.MANIFEST).is_file():
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
    from mufun_local.progress import bar as progress_bar
    bar = progress_bar(desc, 1, "step", quiet, leave=True,
                       bar_format="{desc:<22} {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
    return bar, update


def _check_options(quant, encoder_quant, encoder_backends, output_type, embedding_type) -> None:
    wt = weights.get(quant)
    for flag, kind in (("--output-type", output_type), ("--embedding-type", embedding_type)):
        if kind is not None and (kind not in weights.KEEP_TYPES or not wt.quantized):
            made = ", ".join(t.name for t in weights.TYPES.values() if t.quantized)
            raise ModelError(f"{flag} {kind}: give {' or '.join(weights.KEEP_TYPES)}, with a quantized --quant ({made})")
    if encoder_quant not in ENCODER_QUANTS:
        raise ModelError(f"--encoder-quant {encoder_quant}: choose from {', '.join(ENCODER_QUANTS)}")
    if not encoder_backends or set(encoder_backends) - set(ENCODER_ARTIFACTS):
        raise ModelError(f"--encoder-backends {','.join(encoder_backends)}: "
                         f"give one or more of {', '.join(ENCODER_ARTIFACTS)}, comma-separated")


def space_needed(ckpt, quant: str, encoder_quant: str, encoder_backends, onnx_int8: bool) -> int:
    """What the conversion writes at its largest, temporary files included (a quantized LLM
    is made from an F16 GGUF that sits beside it until the end), with 5 % room."""
    import math
    llm = sum(math.prod(ckpt.tensors[src].shape) for src, _ in gguf_map(ckpt.dims.llm_layers))
    rest = sum(math.prod(t.shape) for t in ckpt.tensors.values()) - llm  # encoder and connector
    enc = rest * bytes_per_weight(encoder_quant, encoder_backends, onnx_int8)
    wt = weights.get(quant)
    gguf = llm * (wt.bits / 8 + (2 if wt.quantized else 0))
    return int(1.05 * (enc + gguf))


def _write_llm(ckpt, tmp: Path, vocab, quant, keep_f16, threads, quiet, verbose, log, output_type,
               embedding_type, calibrate=None) -> dict:
    """llm-<quant>.gguf (via an F16 GGUF and llama.cpp's quantizer unless gguf-py writes the
    type itself); its manifest entry. `calibrate(f16_path)`, when given and the weight type
    takes one, returns the importance matrix and what it was made from."""
    name, quantized = weights.gguf_name(quant), weights.get(quant).quantized
    base = "f16" if quantized else quant
    base_path = tmp / weights.gguf_name(base)
    bar, upd = _bar(f"llm ({base})", quiet)
    write_gguf(ckpt, base_path, base, vocab, progress=upd)
    bar.close()
    imatrix, made_from = None, None
    if quantized and calibrate is not None and weights.get(quant).imatrix:
        t0 = time.perf_counter()
        imatrix, made_from = calibrate(base_path)
        log(f"importance matrix from {made_from} in {time.perf_counter() - t0:.1f} s")
    if quantized:
        log(f"quantizing to {quant} with llama.cpp ...")
        t0 = time.perf_counter()
        quantize(base_path, tmp / name, quant, threads, verbose, output_type, embedding_type, imatrix=imatrix)
        log(f"quantized to {quant} in {time.perf_counter() - t0:.1f} s")
        if not keep_f16:
            base_path.unlink()
    return {"file": name, "quant": quant,
            **{k: v for k, v in (("output_type", output_type), ("embedding_type", embedding_type)) if v},
            **({"imatrix": made_from} if imatrix is not None else {}),
            **({"f16_file": base_path.name} if keep_f16 and quantized else {})}


def _checkpoint(src: str, quant: str, quiet: bool, fetch) -> Checkpoint:
    if os.path.isdir(src):
        return Checkpoint(src)
    if os.path.exists(src) or fetch is None:
        raise ModelError(f"{src}: not a checkpoint directory" + (" or a hub id like Yi3852/MuFun-Base" if fetch else ""))
    path, source, revision = fetch(src, quant, quiet)
    return Checkpoint(path, source=source, revision=revision)


def convert(src: str | Checkpoint, out: str | os.PathLike, quant: str = weights.DEFAULT,
            encoder_quant: str = "float16", encoder_backends=None, force: bool = False, keep_f16: bool = False,
            threads: int = 0, quiet: bool = False, verbose: bool = False,
            template: str = "auto", onnx_int8: bool = False,
            output_type: str | None = None, embedding_type: str | None = None, calibrate=None,
            fetch=None) -> Path:
    """Convert `src` (a checkpoint directory, or a hub id that `fetch(id, quant, quiet) ->
    (directory, source id, revision)` makes local: mufun_local.store.hub.fetch_checkpoint) into a
    model directory at `out`; returns its path.
    `calibrate(model, f16_path) -> (importance matrix, what it was made from)` is called for
    the weight types that take one, with the model as converted so far (encoder, connector,
    manifest without the LLM): the runtime's mufun_local.store.imatrix.calibrator makes one from
    MuFun prompts. Without it they are quantized without one.
    `output_type` / `embedding_type` keep lm_head / the token embeddings at q8_0 or f16 in a
    quantized GGUF (docs/accuracy.md: what each mix costs)."""
    log = (lambda msg: None) if quiet else notice
    encoder_backends = default_encoder_backends() if encoder_backends is None else tuple(encoder_backends)
    _check_options(quant, encoder_quant, encoder_backends, output_type, embedding_type)
    out = Path(out)
    t0 = time.perf_counter()
    local = Path(src.path if isinstance(src, Checkpoint) else src)
    check_out(out, local if local.is_dir() else None, force)  # before a download
    ckpt = src if isinstance(src, Checkpoint) else _checkpoint(str(src), quant, quiet, fetch)
    check_out(out, Path(ckpt.path), force)
    d = ckpt.dims
    vocab = load_vocab(ckpt.path, d.vocab_rows)  # the tokenizer is checked before any long work
    special = vocab[3]
    variant = variant_of(f"{ckpt.source} {ckpt.path.name}", ckpt.config) if template == "auto" else template
    if variant not in TEMPLATES:
        raise ModelError(f"--template {template}: choose from auto, {', '.join(TEMPLATES)}")
    log(f"converting {ckpt.source}: encoder d={d.enc_d} x{d.enc_layers}, "
        f"LLM hidden={d.hidden} x{d.llm_layers}, vocab {d.vocab_rows}, template {variant}")
    diskspace.require(out.parent, space_needed(ckpt, quant, encoder_quant, encoder_backends, onnx_int8),
                      f"converting to {quant}")  # before anything is made, parent folders included
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
        stop_ids = [i for i in (special["im_end"], special["endoftext"]) if i is not None]
        manifest = {
            "format_version": model_dir.FORMAT_VERSION,
            "source": {"id": str(ckpt.source), "revision": ckpt.revision},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tools": _tool_versions(),
            "dims": asdict(d),
            "encoder": {"dir": "encoder", "backends": enc["artifacts"], "feature_layers": enc["feature_layers"],
                        **({"stored_quantization": encoder_quant} if "ctranslate2" in encoder_backends else {})},
            "connector": conn,
            "prompt": TEMPLATES[variant].manifest_entry(),
            "stop_ids": stop_ids,
            "generation": _generation_defaults(ckpt.generation_config),
        }
        audio_half = model_dir.ModelDir(tmp, manifest)  # what calibration runs: the LLM is not there yet
        manifest["llm"] = _write_llm(ckpt, tmp, vocab, quant, keep_f16, threads, quiet, verbose, log, output_type,
                                     embedding_type, None if calibrate is None else
                                     (lambda f16: calibrate(audio_half, f16)))
        manifest["files"] = model_dir.hash_tree(tmp)
        (tmp / model_dir.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _usual_modes(tmp)
        check_out(out, Path(ckpt.path), force)  # OUT may have changed during the long work
        _replace(tmp, out)
    except BaseException as exc:
        full = diskspace.full_disk_error(exc, out.parent)  # before the partial files go
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from None
        raise
    size = sum(f["size"] for f in manifest["files"].values())
    log(f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return out
