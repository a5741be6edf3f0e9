"""Shared fixtures: synthetic checkpoints, converted models and the PyTorch reference.

Everything is generated here from seeds; nothing is downloaded.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# The PyTorch reference (the oracle) lives with the scripts, outside the installed package.
sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Caches the runtime writes (embeddings, the encoder-backend measurement) stay out of the
# user's, in a folder removed when the run ends.
os.environ["MUFUN_HOME"] = tempfile.mkdtemp(prefix="mufun-test-home-")
atexit.register(shutil.rmtree, os.environ["MUFUN_HOME"], ignore_errors=True)


@pytest.fixture
def encoder_calls(monkeypatch):
    """Counts the windows of each encoder call (any backend)."""
    from mufun_local.encoder.base import EncoderBase
    calls = []
    real = EncoderBase.hidden_states

    def counting(self, mel, **kw):
        calls.append(len(mel))
        return real(self, mel, **kw)
    monkeypatch.setattr(EncoderBase, "hidden_states", counting)
    return calls


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from mufun_local.synthetic import generate
    return generate(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=0)


def _converted(tmp_path_factory, ckpt, quant, encoder_quant, backends=("ctranslate2",), onnx_int8=False):
    from mufun_local.convert.run import convert
    out = tmp_path_factory.mktemp("models") / f"tiny-{quant}-{encoder_quant}-{'-'.join(backends)}"
    return convert(str(ckpt), out, quant=quant, encoder_quant=encoder_quant, encoder_backends=backends, quiet=True,
                   onnx_int8=onnx_int8)


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory, tiny_ckpt) -> Path:
    """The parity model: F32 GGUF, float32 encoder."""
    return _converted(tmp_path_factory, tiny_ckpt, "f32", "float32")


@pytest.fixture(scope="session")
def tiny_all(tmp_path_factory, tiny_ckpt) -> Path:
    """F32 GGUF with every encoder artifact: CTranslate2 float32 and the ONNX graphs."""
    return _converted(tmp_path_factory, tiny_ckpt, "f32", "float32", ("ctranslate2", "onnx"), onnx_int8=True)


@pytest.fixture(scope="session")
def tiny_f16(tmp_path_factory, tiny_ckpt) -> Path:
    return _converted(tmp_path_factory, tiny_ckpt, "f16", "float32")


@pytest.fixture(scope="session")
def tiny_q4(tmp_path_factory, tiny_ckpt) -> Path:
    """The default conversion: q4_k_m GGUF, float16-stored encoder."""
    return _converted(tmp_path_factory, tiny_ckpt, "q4_k_m", "float16")


@pytest.fixture(scope="session")
def ref():
    """The PyTorch oracle module (scripts/mufun_reference.py); its tests skip without torch."""
    pytest.importorskip("torch", reason="the PyTorch reference needs the test extra's torch")
    pytest.importorskip("transformers", reason="the PyTorch reference needs transformers")
    import mufun_reference
    return mufun_reference


@pytest.fixture(scope="session")
def reference(ref, tiny_ckpt):
    return ref.ReferenceMuFun(tiny_ckpt)


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """A few music-like files the parity tests share."""
    from audio_fixtures import music, write_audio
    d = tmp_path_factory.mktemp("audio")
    write_audio(d / "song44k.wav", music(7.5, 44100, 2, seed=1), 44100)
    write_audio(d / "song22k.flac", music(4.0, 22050, 1, seed=2), 22050)
    write_audio(d / "long48k.flac", music(34.0, 48000, 2, seed=3), 48000)
    return d


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A MUFUN_HOME where `demo` builds its tiny model once for every test that runs it."""
    return tmp_path_factory.mktemp("demo-home")


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory) -> Path:
    """Real Whisper-large-v3 encoder dims + a Qwen3-0.6B-shaped LLM (~2.5 GB, ~30 s)."""
    from mufun_local.synthetic import generate
    return generate(tmp_path_factory.mktemp("ckpt") / "small", "small", seed=0)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory, small_ckpt) -> Path:
    """The small checkpoint converted once for every real-dimension test: the encoder stored
    float32 for both engines and ONNX Runtime's int8 graph; q4_k_m with its F16 kept."""
    from mufun_local.convert.run import convert
    return convert(str(small_ckpt), tmp_path_factory.mktemp("small") / "model", quant="q4_k_m", keep_f16=True,
                   encoder_quant="float32", encoder_backends=("ctranslate2", "onnx"), onnx_int8=True, quiet=True)


@pytest.fixture(scope="session")
def small_encoder(small_ckpt, small_model):
    return small_ckpt, small_model / "encoder"


@pytest.fixture(scope="module")
def serve(tiny_q4, tmp_path_factory):
    """Start `mufun-local serve` on a free loopback port with the given extra arguments."""
    import socket
    import subprocess
    import time
    import urllib.error
    import urllib.request

    procs = []

    def start(*args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tmp = tmp_path_factory.mktemp("tmp")   # the server's temporary folder, to check for leaks
        env = dict(os.environ, MUFUN_HOME=str(tmp_path_factory.mktemp("home")), TMPDIR=str(tmp))
        proc = subprocess.Popen([sys.executable, "-m", "mufun_local", "serve", "-m", str(tiny_q4),
                                 "--port", str(port), *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                with urllib.request.urlopen(base + "/health", timeout=1) as r:
                    if r.status == 200:
                        start.tmpdirs[base] = tmp
                        return base
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None:
                    break
                time.sleep(0.25)
        proc.kill()
        raise RuntimeError("server did not start: " + proc.stdout.read().decode()[-2000:])

    start.tmpdirs = {}
    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
