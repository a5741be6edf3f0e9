"""`mufun-local demo`: a synthetic checkpoint -> convert -> a test chord -> the `ask` path."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..paths import home


def test_chord(path, seconds: float = 3.0, rate: int = 44100) -> None:
    """A stereo A-minor chord with a little noise, as 16-bit WAV (written by soundfile)."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 261.63, 329.63)) / 3
    env = np.minimum(1.0, t * 20) * np.exp(-t * 0.5)
    rng = np.random.default_rng(0)
    left = 0.5 * chord * env + 0.01 * rng.standard_normal(len(t))
    right = 0.45 * np.roll(chord, 50) * env + 0.01 * rng.standard_normal(len(t))
    sf.write(str(path), np.stack([left, right], 1).astype(np.float32), rate, subtype="PCM_16")


def demo_paths() -> tuple[Path, Path, Path]:
    """The demo's checkpoint, model directory and song under $MUFUN_HOME/demo."""
    from ..format import weights
    root = home() / "demo"
    return root / "checkpoint-tiny", root / f"model-tiny-{weights.DEFAULT}", root / "chord.wav"


def run_demo(question: str, max_tokens: int, echo: Callable[[str], None] = print) -> Path:
    """Make (once) and run the demo; returns its model directory."""
    from filelock import FileLock

    from ..format import weights
    from ..format.model_dir import MANIFEST, ModelDir
    from ..convert.run import convert, default_encoder_backends
    from ..model import Model
    from ..synthetic import generate

    ckpt, model_dir, wav = demo_paths()
    root = model_dir.parent
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        t0 = time.perf_counter()
        if not (ckpt / "model.safetensors.index.json").is_file():
            generate(ckpt, "tiny", seed=0)
            echo(f"[1/4] synthetic MuFun checkpoint (tiny, random weights) written to {ckpt} "
                 f"({time.perf_counter() - t0:.1f} s)")
        else:
            echo(f"[1/4] synthetic MuFun checkpoint (tiny, random weights): {ckpt} (cached)")
        t0 = time.perf_counter()
        if not (model_dir / MANIFEST).is_file():
            backends = default_encoder_backends()
            from ..store.imatrix import calibrator
            convert(str(ckpt), model_dir, encoder_backends=backends, force=True, quiet=True, calibrate=calibrator())
            echo(f"[2/4] converted to {' + '.join(backends)} encoder, connector and {weights.DEFAULT} GGUF in {model_dir} "
                 f"({time.perf_counter() - t0:.1f} s)")
        else:
            echo(f"[2/4] converted model: {model_dir} (cached)")
        if not wav.is_file():
            test_chord(wav)
        echo(f"[3/4] test audio: {wav} (3 s stereo A-minor chord, 44.1 kHz)")
    echo(f"[4/4] mufun-local ask {wav.name} {question!r} --temperature 0")
    with Model(ModelDir.open(model_dir), caches=None) as model:
        res = model.ask(wav, question, max_tokens=max_tokens, temperature=0.0).result()
    for stage in ("decode", "features", "encoder", "connector", "prefill", "generate"):
        echo(f"      {stage:<10} {res.timings.get(stage, 0.0) * 1000:8.1f} ms")
    echo(f"      {res.audio_tokens} audio embeddings + {res.prompt_tokens} prompt tokens -> "
         f"{len(res.tokens)} generated tokens")
    echo("answer (random weights, so this is noise; every stage ran):")
    echo(repr(res.text))
    echo("Next: `mufun-local pull` fetches and converts the real model (it says the size first), "
         "then `mufun-local ask song.flac \"What genre is this?\"` asks about your own music.")
    return model_dir
