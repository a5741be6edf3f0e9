"""The CLI as a user sees it: answers on stdout, one-line errors, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import assert_one_line_error, run_cli


def test_ask_json(capsys, tiny_q4, audio_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MUFUN_HOME", str(tmp_path))   # empty caches
    code, out, err = run_cli(capsys, "ask", "--model", str(tiny_q4), str(audio_dir / "song22k.flac"),
                             "What genre?", "--json", "--temperature", "0", "--max-tokens", "6")
    assert code == 0, err
    res = json.loads(out)
    assert set(res) >= {"text", "tokens", "prompt_tokens", "audio_tokens", "timings"}
    assert res["audio_tokens"] == 300 and 1 <= len(res["tokens"]) <= 6
    assert set(res["timings"]) == {"decode", "features", "encoder", "connector", "prefill", "generate", "load",
                                   "prefix_save"}
    assert set(res["peak_rss_mb"]) >= {"load", "encoder", "prefill", "generate"}
    # another question about the same song: the prefix comes from disk, only the question runs
    code, out, err = run_cli(capsys, "ask", "--model", str(tiny_q4), str(audio_dir / "song22k.flac"),
                             "Which instruments?", "--json", "--temperature", "0", "--max-tokens", "6")
    again = json.loads(out)
    assert set(again["timings"]) == {"decode", "features", "encoder", "connector", "prefill", "generate", "load",
                                     "prefix_load"}
    assert again["timings"]["encoder"] == 0 and again["audio_tokens"] == 300


def test_ask_streams_only_the_answer(capsys, tiny_q4, audio_dir):
    args = ["ask", "-m", str(tiny_q4), str(audio_dir / "song22k.flac"), "What genre?",
            "--temperature", "0", "--max-tokens", "6"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0
    code, out_json, _ = run_cli(capsys, *args, "--json")
    assert out == json.loads(out_json)["text"] + "\n"


def test_model_from_environment(capsys, monkeypatch, tiny_q4, audio_dir):
    monkeypatch.setenv("MUFUN_MODEL", str(tiny_q4))
    code, out, err = run_cli(capsys, "ask", str(audio_dir / "song22k.flac"), "Mood?", "--max-tokens", "3", "--seed", "1")
    assert code == 0, err


@pytest.mark.parametrize("name,content,match", [
    ("missing.flac", None, "no such file"),
    ("empty.wav", b"", "file is empty"),
    ("notes.mp3", b"not audio\n" * 50, "not a readable audio file"),
    # 44,101 Hz shares no factor with 16 kHz: the resampler would need a 2.8 GB kernel
    ("odd-rate.wav", b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x45\xac\x00\x00"
     b"\x8aX\x01\x00\x02\x00\x10\x00data\x00\x01\x00\x00" + bytes(256), "shares no common factor"),
])
def test_bad_audio_one_line(capsys, tmp_path, tiny_q4, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, out, err = run_cli(capsys, "ask", "-m", str(tiny_q4), str(path), "What genre?")
    assert_one_line_error(code, err, match)
    assert out == ""


def test_bad_model_path(capsys, tmp_path, audio_dir):
    code, _, err = run_cli(capsys, "ask", "-m", str(tmp_path / "nowhere"), str(audio_dir / "song22k.flac"), "Q?")
    assert_one_line_error(code, err, "no such model directory")


def test_not_a_model_dir(capsys, tmp_path, audio_dir):
    code, _, err = run_cli(capsys, "ask", "-m", str(tmp_path), str(audio_dir / "song22k.flac"), "Q?")
    assert_one_line_error(code, err, "neither a converted model nor an original MuFun checkpoint")


def test_overflow_one_line(capsys, tiny_q4, audio_dir):
    code, _, err = run_cli(capsys, "ask", "-m", str(tiny_q4), str(audio_dir / "long48k.flac"), "Q?", "--ctx", "512")
    assert_one_line_error(code, err, "no audio fits")


def test_segs_count_mismatch(capsys, tiny_q4, audio_dir):
    code, _, err = run_cli(capsys, "ask", "-m", str(tiny_q4), str(audio_dir / "song22k.flac"), "Q?",
                           "--segs", "0:1", "--segs", "1:2")
    assert_one_line_error(code, err, "--segs once per audio file")


def test_segs_outside_file(capsys, tiny_q4, audio_dir):
    code, _, err = run_cli(capsys, "ask", "-m", str(tiny_q4), str(audio_dir / "song22k.flac"), "Q?", "--segs", "100:120")
    assert_one_line_error(code, err, "beyond the end of the audio")


def test_embed_npy_and_layers(capsys, tmp_path, tiny_f32, audio_dir):
    out = tmp_path / "e.npy"
    code, _, err = run_cli(capsys, "embed", "-m", str(tiny_f32), str(audio_dir / "long48k.flac"), "--out", str(out),
                           "--compute-type", "float32")
    assert code == 0, err
    emb = np.load(out)
    assert emb.shape == (600, 64) and emb.dtype == np.float32
    out2 = tmp_path / "e.npz"
    code, _, err = run_cli(capsys, "embed", "-m", str(tiny_f32), str(audio_dir / "long48k.flac"), "--out", str(out2),
                           "--layers", "--compute-type", "float32")
    z = np.load(out2)
    assert set(z.files) == {"embeddings", "hs0", "hs7", "hs15", "hs32"}
    assert z["hs7"].shape == (2, 1500, 64)
    np.testing.assert_array_equal(z["embeddings"], emb)


def test_embed_segs(capsys, tmp_path, tiny_f32, audio_dir):
    out = tmp_path / "s.npy"
    code, _, err = run_cli(capsys, "embed", "-m", str(tiny_f32), str(audio_dir / "long48k.flac"), "-o", str(out),
                           "--segs", "1:4")
    assert code == 0 and np.load(out).shape == (300, 64)


def test_info_and_verify(capsys, tiny_q4):
    code, out, err = run_cli(capsys, "info", str(tiny_q4), "--verify")
    assert code == 0, err
    assert "q4_k_m" in out and "hidden states [0, 7, 15, 32]" in out and "verified" in out


def test_info_system(capsys):
    code, out, _ = run_cli(capsys, "info", "--system")
    assert code == 0 and "llama.cpp" in out and "ctranslate2" in out and "AMX" in out
    assert "onnxruntime 1." in out and "openvino " in out  # the test extra installs both


def test_convert_cli_refuses_existing(capsys, tmp_path, tiny_ckpt):
    (tmp_path / "out").mkdir()
    code, _, err = run_cli(capsys, "convert", str(tiny_ckpt), str(tmp_path / "out"), "--quant", "f16", "-q")
    assert_one_line_error(code, err, "already exists")


def test_help_has_examples(capsys):
    code, out, _ = run_cli(capsys, "ask", "--help")
    assert code == 0 and "mufun-local ask song.flac" in out and "--segs" in out


def test_original_checkpoint_dir_converts_once_into_the_cache(capsys, monkeypatch, tmp_path, tiny_ckpt, audio_dir):
    monkeypatch.setenv("MUFUN_HOME", str(tmp_path / "home"))
    args = ["ask", "-m", str(tiny_ckpt), str(audio_dir / "song22k.flac"), "Q?", "--max-tokens", "2", "--seed", "0"]
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "converting" in err
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "converting" not in err
    code, out, _ = run_cli(capsys, "models")
    from mufun_local.format import weights
    assert f"-{weights.DEFAULT} " in out  # converted with the default weight type
    from mufun_local.store import models as model_cache
    model_cache.resolve(str(tiny_ckpt), quant="f16")  # another type (pull --quant): converted too, said why
    err = capsys.readouterr().err  # through the CLI's stderr handler, still installed
    assert f"cached as {weights.DEFAULT}, not f16; `--model " in err and "converting" in err


def test_demo(capsys, monkeypatch, demo_home):
    monkeypatch.setenv("MUFUN_HOME", str(demo_home))
    code, out, err = run_cli(capsys, "demo", "--max-tokens", "4")
    assert code == 0, err
    assert "random weights" in out and "encoder" in out and "prefill" in out


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mufun_local", "ask", str(tmp_path / "x.wav"), "Q?",
                           "-m", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_runtime_imports_no_torch():
    code = ("import sys, mufun_local.cli.commands, mufun_local.pipeline, mufun_local.encoder.base, mufun_local.encoder.connector, "
            "mufun_local.llm.llama, mufun_local.audio.decode, mufun_local.audio.features, mufun_local.store.models, mufun_local.convert.run;"
            "bad = [m for m in ('torch', 'transformers', 'torchaudio') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_amx_guard():
    from mufun_local.devices import cpu_has_amx
    from mufun_local.llm.llama import use_extra_bufts
    amx = "processor : 0\nflags : fpu sse avx512f amx_bf16 amx_tile amx_int8\n"
    plain = "processor : 0\nflags : fpu sse avx2 avx512f avx512_vnni\n"
    assert cpu_has_amx(amx) and not cpu_has_amx(plain)
    from mufun_local.format import weights
    repacked = [q for q, t in weights.TYPES.items() if t.repack]
    kept = [q for q, t in weights.TYPES.items() if not t.repack]
    assert repacked and kept
    for q in weights.TYPES:
        assert use_extra_bufts(q, amx, env={}) is False  # the guard, whatever the type
        assert use_extra_bufts(q, plain, env={}) is (q in repacked)
        assert use_extra_bufts(q, amx, env={"MUFUN_LLAMA_EXTRA_BUFTS": "1"}) is True
        assert use_extra_bufts(q, plain, env={"MUFUN_LLAMA_EXTRA_BUFTS": "0"}) is False
    assert use_extra_bufts(None, plain, env={}) is True  # a GGUF of unknown type: llama.cpp's default


def test_offload_choice():
    from mufun_local.devices import choose_offload
    GB = 1024**3
    assert choose_offload(-1, 36, 5 * GB, GB, gpu_backend=False, free_bytes=None).n_gpu_layers == 0
    full = choose_offload(-1, 36, 5 * GB, GB, gpu_backend=True, free_bytes=12 * GB)
    assert full.n_gpu_layers == 37 and "all 36 layers fit" in full.reason
    part = choose_offload(-1, 36, 5 * GB, GB, gpu_backend=True, free_bytes=4 * GB)
    assert 0 < part.n_gpu_layers < 36 and "the rest run on the CPU" in part.reason
    assert choose_offload(-1, 36, 5 * GB, GB, gpu_backend=True, free_bytes=100 * 1024**2).n_gpu_layers == 0
    assert choose_offload(10, 36, 5 * GB, GB, gpu_backend=True, free_bytes=None).n_gpu_layers == 10
    assert choose_offload(10, 36, 5 * GB, GB, gpu_backend=False, free_bytes=None).n_gpu_layers == 0


def test_cuda_requested_without_cuda(capsys, tiny_q4, audio_dir, monkeypatch):
    import mufun_local.devices as devices
    monkeypatch.setattr(devices, "ct2_cuda", lambda: False)
    code, _, err = run_cli(capsys, "ask", "-m", str(tiny_q4), str(audio_dir / "song22k.flac"), "Q?", "--device", "cuda")
    assert_one_line_error(code, err, "no CUDA device")


def test_auto_device_picks_cuda_when_present(monkeypatch):
    import mufun_local.devices as devices
    from mufun_local.encoder.backends import get
    ct2 = get("ctranslate2")
    monkeypatch.setattr(devices, "ct2_cuda", lambda: True)
    assert ct2.device_for("auto") == "cuda" and ct2.default_compute_type("cuda") == "float16"
    monkeypatch.setattr(devices, "ct2_cuda", lambda: False)
    assert ct2.device_for("auto") == "cpu" and ct2.default_compute_type("cpu") == "float32"


def test_mp3_named_text_is_one_clean_line(tmp_path):
    (tmp_path / "notes.mp3").write_text("hello\n")
    proc = subprocess.run([sys.executable, "-c", "from mufun_local.audio.decode import decode; decode('notes.mp3')"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert "Note:" not in proc.stderr  # no decoder chatter before the error
    assert "not a readable audio file (Invalid data found when processing input)" in proc.stderr


def test_chat_from_a_pipe_fails_when_a_turn_fails(tmp_path, tiny_q4):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + b"\0" * 500)
    proc = subprocess.run([sys.executable, "-m", "mufun_local", "chat", "-m", str(tiny_q4), str(bad)],
                          input="Genre?\n", capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, MUFUN_HOME=str(tmp_path / "home")))
    assert proc.returncode == 1 and "bad.flac" in proc.stderr and "Traceback" not in proc.stderr


def test_ask_options_reach_the_request_without_a_model_running(capsys, tiny_q4, audio_dir, monkeypatch):
    """The CLI's plumbing against a FakeModel (no encoder, no llama.cpp): the request
    carries --max-tokens and the sampling flags, --json carries the result."""
    import mufun_local.model as model_mod
    from helpers import FakeModel
    from mufun_local.store.models import resolve
    made = []
    monkeypatch.setattr(model_mod, "Model", lambda spec, **kw: made.append(FakeModel(resolve(spec))) or made[-1])
    code, out, err = run_cli(capsys, "ask", "-m", str(tiny_q4), str(audio_dir / "song22k.flac"), "Genre?",
                             "--max-tokens", "3", "--temperature", "0", "--seed", "5", "--json", "-q")
    assert code == 0, err
    res = json.loads(out)
    assert res["text"] == "a b c" and res["tokens"] == [1, 2, 3] and res["stopped"] == "length"
    audios, req = made[0].calls[0][1], made[0].calls[0][2]
    assert audios[0].source.endswith("song22k.flac")
    assert (req.max_tokens, req.sampling.temperature, req.sampling.seed) == (3, 0.0, 5)


def test_ask_vocabulary_prints_the_ranking_model_rank_gives(capsys, tiny_q4, audio_dir, tmp_path):
    from helpers import open_model
    terms = tmp_path / "genres.txt"
    terms.write_text("Jazz\nRock\nPop\n")
    song = str(audio_dir / "song22k.flac")
    code, out, err = run_cli(capsys, "ask", "-m", str(tiny_q4), song, "What is the genre of this music?",
                             "--vocabulary", str(terms), "--json", "--top", "2", "-q", "--no-cache")
    assert code == 0, err
    with open_model(tiny_q4) as model:
        want = model.rank(song, "What is the genre of this music?", ["Jazz", "Rock", "Pop"])[:2]
    assert json.loads(out)["ranking"] == [[t, round(p, 6)] for t, p in want]
    code, _, err = run_cli(capsys, "ask", "-m", str(tiny_q4), song, "Genre?", "--vocabulary", str(tmp_path / "no.txt"))
    assert_one_line_error(code, err, "cannot read the vocabulary")
