"""--encoder-backend: the auto choice, its cache, and what a user sees when a backend is missing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mufun_local.encoder import choice as encoder_choice
from mufun_local.format.model_dir import ModelDir
from mufun_local.errors import ModelError
from mufun_local.pipeline import AudioInput, Options, Pipeline, Request
from helpers import assert_one_line_error, run_cli


def test_auto_times_each_candidate_once_then_reads_the_cache(tiny_all, tmp_path, monkeypatch, caplog):
    from mufun_local.logs import NOTICE
    caplog.set_level(NOTICE, logger="mufun_local")
    enc_dir = ModelDir.open(tiny_all).encoder_dir
    cache = tmp_path / "choice.json"
    first = encoder_choice.choose(enc_dir, "auto", "cpu", None, 2, cache)
    msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encoder: timing")]
    timed = {f"{b} {c}" for b, c in encoder_choice.candidates(enc_dir, None)}
    assert set(first.seconds) == timed and {"ctranslate2 float32", "onnxruntime float32"} <= timed
    assert not any("int8" in t for t in timed), "int8 loses more than the original's bf16: never a default"
    assert f"{first.backend} {first.compute_type}" == min(first.seconds, key=first.seconds.get)
    assert len(msgs) == len(timed) and "measured now" in first.reason

    monkeypatch.setattr(encoder_choice, "measure", lambda *a: pytest.fail("measured twice"))
    again = encoder_choice.choose(enc_dir, "auto", "cpu", None, 2, cache)
    assert (again.backend, again.compute_type) == (first.backend, first.compute_type)
    assert "measured earlier" in again.reason

    # the fastest in the cache wins, whatever it is
    key, = json.loads(cache.read_text())
    cache.write_text(json.dumps({key: {"ctranslate2 float32": 9.0, "onnxruntime float32": 1.0, "openvino bfloat16": 5.0}}))
    assert encoder_choice.choose(enc_dir, "auto", "cpu", None, 2, cache).backend == "onnxruntime"


def test_auto_with_a_compute_type_measures_only_backends_that_have_it(tiny_all):
    pairs = encoder_choice.candidates(ModelDir.open(tiny_all).encoder_dir, "float32")
    assert {b for b, _ in pairs} == {"ctranslate2", "onnxruntime", "openvino"}
    assert {c for _, c in pairs} == {"float32"}
    assert encoder_choice.candidates(ModelDir.open(tiny_all).encoder_dir, "int8_float16") == [("ctranslate2", "int8_float16")]


def test_auto_without_a_choice_does_not_measure(tiny_q4, tiny_all, monkeypatch):
    monkeypatch.setattr(encoder_choice, "measure", lambda *a: pytest.fail("nothing to choose from"))
    only_ct2 = encoder_choice.choose(ModelDir.open(tiny_q4).encoder_dir, "auto", "cpu")
    assert (only_ct2.backend, only_ct2.compute_type) == ("ctranslate2", "float32")
    import mufun_local.devices as devices
    monkeypatch.setattr(devices, "ct2_cuda", lambda: True)
    on_gpu = encoder_choice.choose(ModelDir.open(tiny_all).encoder_dir, "auto", "auto")
    assert (on_gpu.backend, on_gpu.compute_type) == ("ctranslate2", "float16")


def test_answers_match_across_float32_backends(tiny_all, audio_dir):
    """ask through each engine: the same first-step logits as CTranslate2 float32."""
    logits = {}
    for backend in ("ctranslate2", "onnxruntime", "openvino"):
        pipe = Pipeline(ModelDir.open(tiny_all), Options(device="cpu", encoder_backend=backend, compute_type="float32",
                                                         f32_kv=True))
        logits[backend] = pipe.ask([AudioInput(str(audio_dir / "song44k.wav"))], "What genre is this?",
                                   Request(4, keep_logits=True)).result().first_logits
        pipe.close()
    base = logits.pop("ctranslate2")
    for backend, x in logits.items():
        assert np.abs(x - base).max() <= 1e-3 * np.abs(base).max(), backend


def test_cli_verbose_says_what_it_picked(capsys, tiny_all, audio_dir):
    code, out, err = run_cli(capsys, "embed", "-m", str(tiny_all), str(audio_dir / "song22k.flac"), "-o",
                             str(audio_dir.parent / "e.npy"), "--encoder-backend", "onnxruntime", "-v")
    assert code == 0 and "encoder: onnxruntime on cpu, float32 (as requested)" in err


def test_backend_not_converted_is_one_line(capsys, tiny_q4, audio_dir):
    code, _, err = run_cli(capsys, "ask", "-m", str(tiny_q4), str(audio_dir / "song22k.flac"), "Q?",
                           "--encoder-backend", "openvino")
    assert_one_line_error(code, err, "has no onnx encoder for --encoder-backend openvino")


def test_compute_type_the_backend_lacks_is_one_line(capsys, tiny_all, audio_dir):
    code, _, err = run_cli(capsys, "ask", "-m", str(tiny_all), str(audio_dir / "song22k.flac"), "Q?",
                           "--encoder-backend", "onnxruntime", "--compute-type", "float16")
    assert_one_line_error(code, err, "compute type 'float16' on onnxruntime: choose from int8, float32")


def test_missing_engine_says_how_to_install(tiny_all, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    from mufun_local.encoder.backends import load_encoder
    with pytest.raises(ModelError, match=r"onnxruntime is not installed .*`pip install onnxruntime`"):
        load_encoder(ModelDir.open(tiny_all).encoder_dir, "onnxruntime")
    assert ("onnxruntime", "int8") not in encoder_choice.candidates(ModelDir.open(tiny_all).encoder_dir, None)


def test_damaged_onnx_file_is_one_line(tiny_all, tmp_path):
    import shutil
    copy = tmp_path / "model"
    shutil.copytree(tiny_all, copy)
    (copy / "encoder" / "onnx" / "encoder.int8.onnx").write_bytes(b"\x08\x07garbage")
    from mufun_local.encoder.backends import load_encoder
    with pytest.raises(ModelError, match="encoder.int8.onnx: cannot load") as exc:
        load_encoder(copy / "encoder", "onnxruntime", "cpu", "int8")
    assert "\n" not in str(exc.value)


def test_manifest_lists_and_hashes_the_onnx_files(tiny_all):
    md = ModelDir.open(tiny_all)
    assert md.manifest["encoder"]["backends"] == ["ctranslate2", "onnx"]
    for name in ("encoder.onnx", "encoder.onnx.data", "encoder.int8.onnx", "encoder.int8.onnx.data"):
        assert f"encoder/onnx/{name}" in md.manifest["files"]
    assert md.verify() == []


def test_openvino_bf16_reads_its_16_bit_file_and_older_models_the_onnx_one(tiny_all, tmp_path):
    """The converter writes OpenVINO's own file with the weights at 16 bits (read from the
    ONNX file, OpenVINO holds them in float32 as well: 5.4 GB instead of 2.9 at full size);
    bfloat16 runs use it, float32 runs and models converted without it use the ONNX file,
    and the two give the same hidden states up to bfloat16 rounding."""
    import shutil

    from mufun_local.encoder.backends import load_encoder
    ov = pytest.importorskip("openvino")
    md = ModelDir.open(tiny_all)
    assert {"encoder/onnx/encoder.openvino.xml", "encoder/onnx/encoder.openvino.bin"} <= set(md.manifest["files"])
    model = ov.Core().read_model(str(md.encoder_dir / "onnx" / "encoder.openvino.xml"))
    weights = [op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_output_size()
               and int(np.prod(list(op.get_output_shape(0)))) >= 64 * 64]
    assert weights and {str(op.get_element_type()) for op in weights} == {"<Type: 'float16'>"}
    mel = np.random.default_rng(0).standard_normal((2, md.manifest["dims"]["n_mels"], 3000)).astype(np.float32)
    new = load_encoder(md.encoder_dir, "openvino", "cpu", "bfloat16")
    assert new.path.name == "encoder.openvino.xml"
    assert load_encoder(md.encoder_dir, "openvino", "cpu", "float32").path.name == "encoder.onnx"
    old_dir = tmp_path / "encoder"
    shutil.copytree(md.encoder_dir, old_dir)
    info = json.loads((old_dir / "encoder.json").read_text())
    del info["onnx"]["openvino"]
    (old_dir / "encoder.json").write_text(json.dumps(info))
    for f in old_dir.glob("onnx/encoder.openvino.*"):
        f.unlink()
    old = load_encoder(old_dir, "openvino", "cpu", "bfloat16")
    assert old.path.name == "encoder.onnx"
    a, b = new.hidden_states(mel).hs32, old.hidden_states(mel).hs32
    assert np.linalg.norm(a - b) <= 2e-2 * np.linalg.norm(b)


def test_damaged_openvino_file_is_one_line(tiny_all, tmp_path):
    import shutil

    from mufun_local.encoder.backends import load_encoder
    pytest.importorskip("openvino")
    copy = tmp_path / "encoder"
    shutil.copytree(ModelDir.open(tiny_all).encoder_dir, copy)
    (copy / "onnx" / "encoder.openvino.xml").write_text("<net garbage")
    with pytest.raises(ModelError, match="encoder.openvino.xml: cannot load") as exc:
        load_encoder(copy, "openvino", "cpu", "bfloat16")
    assert "\n" not in str(exc.value)


def test_onnx_weights_are_stored_exactly(tiny_all, tiny_ckpt):
    """bfloat16-stored weights behind a Cast are the checkpoint's numbers, bit for bit."""
    import onnx
    from onnx import numpy_helper

    from mufun_local.convert.read_checkpoint import Checkpoint
    m = onnx.load(str(ModelDir.open(tiny_all).encoder_dir / "onnx" / "encoder.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    stored = numpy_helper.to_array(inits["vision_tower._vision_tower.layers.3.fc1.weight.bf16"])
    assert stored.dtype != np.float32
    want = Checkpoint(tiny_ckpt).get("vision_tower._vision_tower.layers.3.fc1.weight").T
    np.testing.assert_array_equal(np.asarray(stored, dtype=np.float32), want)


def test_convert_cli_encoder_backends(capsys, tiny_ckpt, tmp_path, audio_dir):
    code, _, err = run_cli(capsys, "convert", str(tiny_ckpt), str(tmp_path / "m"), "--encoder-backends", "onnx",
                           "--quant", "f16", "-q")
    assert code == 0, err
    md = ModelDir.open(tmp_path / "m")
    assert md.manifest["encoder"]["backends"] == ["onnx"] and not (md.encoder_dir / "seg0").exists()
    assert encoder_choice.choose(md.encoder_dir, "auto", "cpu").backend in ("onnxruntime", "openvino")
    # the int8 graph is opt-in (--onnx-int8): without it, asking for int8 says how to get it
    assert not (md.encoder_dir / "onnx" / "encoder.int8.onnx").exists()
    code, _, err = run_cli(capsys, "embed", "-m", str(tmp_path / "m"), str(audio_dir / "song22k.flac"), "-o",
                           str(tmp_path / "e.npy"), "--encoder-backend", "onnxruntime", "--compute-type", "int8")
    assert_one_line_error(code, err, "--onnx-int8")
    code, _, err = run_cli(capsys, "convert", str(tiny_ckpt), str(tmp_path / "n"), "--encoder-backends", "tensorrt")
    assert_one_line_error(code, err, "--encoder-backends tensorrt: give one or more of ctranslate2, onnx")
    assert not (tmp_path / "n").exists()


def test_converted_files_get_the_usual_modes(tiny_all):
    """safetensors and ONNX Runtime's quantizer create files 0600; a shared model dir must not."""
    import os
    mask = os.umask(0)
    os.umask(mask)
    for rel in ModelDir.open(tiny_all).manifest["files"]:
        assert (tiny_all / rel).stat().st_mode & 0o777 == 0o666 & ~mask, rel


def test_auto_int8_without_the_onnx_int8_graph_runs_ctranslate2(tmp_path, tiny_ckpt, monkeypatch):
    """A model converted without --onnx-int8 has CTranslate2's int8 engine but not ONNX
    Runtime's int8 graph: `auto` with int8 considers only the engine whose files are there
    (it timed ONNX Runtime int8, picked it and failed)."""
    from mufun_local.convert.run import convert
    out = convert(str(tiny_ckpt), tmp_path / "m", quant="f16", encoder_backends=("ctranslate2", "onnx"), quiet=True)
    enc_dir = ModelDir.open(out).encoder_dir
    assert encoder_choice.candidates(enc_dir, "int8") == [("ctranslate2", "int8")]
    monkeypatch.setattr(encoder_choice, "measure", lambda *a, **k: pytest.fail("one candidate: nothing to time"))
    c = encoder_choice.choose(enc_dir, "auto", "cpu", "int8")
    assert (c.backend, c.compute_type) == ("ctranslate2", "int8")
