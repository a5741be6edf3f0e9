"""Converter: GGUF contents, tokenizer, logits, manifest, and refusal of bad checkpoints."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from mufun_local.format.model_dir import ModelDir
from mufun_local.cli import main
from mufun_local.convert.read_checkpoint import Checkpoint
from mufun_local.convert.run import convert
from mufun_local.format.checkpoint import gguf_map
from mufun_local.store.hub import fetch_checkpoint
from mufun_local.errors import ModelError
from mufun_local.format import weights
from mufun_local.llm.llama import LLM


def _reader(model_dir):
    import gguf
    md = ModelDir.open(model_dir)
    return gguf.GGUFReader(str(md.llm_file))


def _field(reader, key):
    f = reader.fields[key]
    return f.contents()


def test_gguf_metadata(tiny_f32, tiny_ckpt):
    r = _reader(tiny_f32)
    cfg = json.loads((tiny_ckpt / "config.json").read_text())["text_config"]
    assert _field(r, "general.architecture") == "qwen3"
    assert _field(r, "qwen3.embedding_length") == cfg["hidden_size"]
    assert _field(r, "qwen3.block_count") == cfg["num_hidden_layers"]
    assert _field(r, "qwen3.attention.head_count_kv") == cfg["num_key_value_heads"]
    assert _field(r, "qwen3.attention.key_length") == cfg["head_dim"]
    assert _field(r, "qwen3.rope.freq_base") == pytest.approx(cfg["rope_theta"])
    assert _field(r, "qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert _field(r, "tokenizer.ggml.pre") == "qwen2"
    assert _field(r, "tokenizer.ggml.add_bos_token") is False
    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg["vocab_size"]
    vocab = json.loads((tiny_ckpt / "vocab.json").read_text())
    base = len(vocab)
    assert tokens[base] == "<|endoftext|>" and types[base] == 3          # control
    assert tokens[base + 24] == "<think>" and types[base + 24] == 4      # user-defined
    assert types[-1] == 5 and tokens[-1].startswith("[PAD")                # unused padding row
    assert _field(r, "tokenizer.ggml.eos_token_id") == base


def test_gguf_tensors_round_trip_exactly(tiny_f32, tiny_ckpt):
    r = _reader(tiny_f32)
    ckpt = Checkpoint(tiny_ckpt)
    by_name = {t.name: t for t in r.tensors}
    pairs = gguf_map(ckpt.dims.llm_layers)
    assert set(by_name) == {dst for _, dst in pairs}
    for src, dst in pairs:
        data = np.asarray(by_name[dst].data).reshape(ckpt.tensors[src].shape)
        np.testing.assert_array_equal(data, ckpt.get(src), err_msg=dst)


def _logit_error(gguf, reference) -> float:
    """Relative error of llama.cpp's last logits on a text prompt against Qwen3 in PyTorch."""
    import torch
    llm = LLM(gguf)
    llm.open_context(512, 512, f32_kv=True)
    ids = reference.tokenizer(reference.prompt("Is there a singer?").replace("<audio>", ""),
                              add_special_tokens=False).input_ids
    llm.eval_tokens(ids)
    with torch.no_grad():
        theirs = reference.llm(torch.tensor([ids])).logits[0, -1].numpy()
    ours = llm.logits()
    llm.close()
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def test_bf16_keeps_the_release_weights_bit_for_bit(tmp_path, tiny_ckpt, reference):
    """--quant bf16 stores the checkpoint's own bf16 weights (norms stay F32): no rounding at
    all, and llama.cpp's logits match the Qwen3 reference as F16's do."""
    import gguf
    out = convert(str(tiny_ckpt), tmp_path / "bf16", quant="bf16", quiet=True)
    md = ModelDir.open(out)
    assert md.llm_file.name == "llm-bf16.gguf" and md.manifest["llm"]["quant"] == "bf16"
    ckpt = Checkpoint(tiny_ckpt)
    by_name = {t.name: t for t in gguf.GGUFReader(str(md.llm_file)).tensors}
    for src, dst in gguf_map(ckpt.dims.llm_layers):
        t = by_name[dst]
        want = gguf.GGMLQuantizationType.F32 if t.data.ndim == 1 else gguf.GGMLQuantizationType.BF16
        assert t.tensor_type == want, dst
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ckpt.tensors[src].shape)
        np.testing.assert_array_equal(data, ckpt.get(src), err_msg=dst)
    assert _logit_error(md.llm_file, reference) <= 1e-2


STRINGS = [
    "What genre is this song?", "  leading spaces and  double  spaces", "tabs\tand\nnewlines\n\n",
    "Numbers 1234567 3.14159 and 2024-03-12", "Unicode: café, naïve, Ünïcödé, 日本語, emoji 🎵🎸",
    "<|im_start|>user\nhi<|im_end|>", "<think>reasoning</think> answer", "don't won't it's I'm we'll",
    "UPPER lower MiXeD", "a" * 50, "    \n   \t  ", "end with space ",
]


def test_gguf_tokenizer_equals_transformers(tiny_f32, tiny_ckpt, reference):
    llm = LLM(ModelDir.open(tiny_f32).llm_file)
    prompt = reference.prompt("What genre is this? Answer in one word.")
    for s in STRINGS + prompt.split("<audio>"):
        assert llm.tokenize(s) == reference.tokenizer(s, add_special_tokens=False).input_ids, repr(s)
    ids = reference.tokenizer(STRINGS[4], add_special_tokens=False).input_ids
    assert b"".join(llm.token_bytes(t) for t in ids).decode() == STRINGS[4]
    llm.close()


@pytest.mark.parametrize("fixture,tol", [("tiny_f32", 1e-4), ("tiny_f16", 1e-2)])
def test_logits_match_qwen3(request, reference, fixture, tol):
    assert _logit_error(ModelDir.open(request.getfixturevalue(fixture)).llm_file, reference) <= tol


@pytest.mark.parametrize("quant", [q for q, t in weights.TYPES.items() if t.quantized])
def test_every_quant_loads(tmp_path, tiny_ckpt, quant):
    out = convert(str(tiny_ckpt), tmp_path / quant, quant=quant, quiet=True)
    md = ModelDir.open(out)
    assert md.llm_file.name == f"llm-{quant}.gguf"
    assert not (out / "llm-f16.gguf").exists(), "the F16 intermediate is deleted"
    llm = LLM(md.llm_file)
    llm.open_context(256)
    llm.eval_tokens(llm.tokenize("A chat between"))
    assert np.isfinite(llm.logits()).all()
    llm.close()


def test_keep_f16(tmp_path, tiny_ckpt):
    out = convert(str(tiny_ckpt), tmp_path / "m", quant="q8_0", keep_f16=True, quiet=True)
    assert (out / "llm-f16.gguf").is_file() and "llm-f16.gguf" in ModelDir.open(out).manifest["files"]


def test_manifest(tiny_q4, tiny_ckpt):
    m = ModelDir.open(tiny_q4).manifest
    assert m["format_version"] == 1
    assert m["encoder"]["feature_layers"] == [0, 7, 15, 32]
    assert m["encoder"]["stored_quantization"] == "float16"
    assert m["connector"]["pool_stride"] == 5 and m["connector"]["tokens_per_window"] == 300
    base = len(json.loads((tiny_ckpt / "vocab.json").read_text()))
    assert m["stop_ids"] == [base + 2, base]
    assert m["generation"]["temperature"] == 0.2
    assert "USER: {user} ASSISTANT:" in m["prompt"]["template"]
    assert {"ctranslate2", "gguf", "llama-cpp-python"} <= set(m["tools"])
    for rel, meta in m["files"].items():
        assert (tiny_q4 / rel).stat().st_size == meta["size"]


def test_verify_catches_a_changed_byte(tmp_path, tiny_q4):
    copy = shutil.copytree(tiny_q4, tmp_path / "copy")
    md = ModelDir.open(copy)
    assert md.verify() == []
    target = copy / "connector.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    assert ModelDir.open(copy).verify() == ["connector.safetensors"]


def test_truncated_model_file_is_refused(tmp_path, tiny_q4):
    copy = shutil.copytree(tiny_q4, tmp_path / "copy")
    gguf = next(copy.glob("llm-*.gguf"))
    gguf.write_bytes(gguf.read_bytes()[:1000])
    with pytest.raises(ModelError, match="truncated"):
        ModelDir.open(copy)


# ------------------------------------------------------------------ refusals


def _copy_ckpt(tiny_ckpt, tmp_path):
    return shutil.copytree(tiny_ckpt, tmp_path / "ckpt")


def _refused(src, out, match):
    with pytest.raises(ModelError, match=match):
        convert(str(src), out, quant="f16", quiet=True)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]


def test_missing_tensor(tmp_path, tiny_ckpt):
    src = _copy_ckpt(tiny_ckpt, tmp_path)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    name = "vision_tower._vision_tower.layers.3.fc1.weight"
    shard = src / index["weight_map"][name]
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(shard))
    del tensors[name]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    del index["weight_map"][name]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    _refused(src, tmp_path / "out", "missing tensor.*layers.3.fc1.weight")


def test_bf16_bits_are_the_stored_ones_or_round_as_torch_does(tmp_path, tiny_ckpt):
    """get_bf16: a bf16 release's own bits; a float32 tensor (some fine-tunes save those)
    rounded to nearest even, as torch's .to(bfloat16) does."""
    import torch
    from safetensors.torch import load_file, save_file
    src = _copy_ckpt(tiny_ckpt, tmp_path)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    kept, widened = [s for s, _ in gguf_map(1) if s.endswith("up_proj.weight") or s.endswith("down_proj.weight")]
    stored = load_file(str(src / index["weight_map"][kept]))[kept].view(torch.int16).numpy().view(np.uint16)
    shard = src / index["weight_map"][widened]
    tensors = load_file(str(shard))
    noisy = tensors[widened].float() * (1 + 1e-3 * torch.randn(tensors[widened].shape, generator=torch.Generator().manual_seed(0)))
    tensors[widened] = noisy
    save_file(tensors, str(shard), metadata={"format": "pt"})
    ckpt = Checkpoint(src)
    assert ckpt.tensors[widened].dtype == "F32"
    want = noisy.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ckpt.get_bf16(widened, chunk=1000), want)
    assert ckpt.tensors[kept].dtype == "BF16"
    np.testing.assert_array_equal(ckpt.get_bf16(kept, chunk=1000), stored)


def test_config_disagrees_with_tensors(tmp_path, tiny_ckpt):
    src = _copy_ckpt(tiny_ckpt, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 96
    (src / "config.json").write_text(json.dumps(cfg))
    _refused(src, tmp_path / "out", r"mlp\..*_proj.weight has shape .* implies")


def test_truncated_shard(tmp_path, tiny_ckpt):
    src = _copy_ckpt(tiny_ckpt, tmp_path)
    shard = sorted(src.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    _refused(src, tmp_path / "out", f"{shard.name}: truncated")


def test_missing_file(tmp_path, tiny_ckpt):
    src = _copy_ckpt(tiny_ckpt, tmp_path)
    (src / "merges.txt").unlink()
    _refused(src, tmp_path / "out", "missing checkpoint file.*merges.txt")


def test_bad_json(tmp_path, tiny_ckpt):
    src = _copy_ckpt(tiny_ckpt, tmp_path)
    (src / "config.json").write_text("{not json")
    _refused(src, tmp_path / "out", "config.json: not valid JSON")


def test_existing_output_needs_force(tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelError, match="--force"):
        convert(str(tiny_ckpt), out, quant="f16", quiet=True)
    convert(str(tiny_ckpt), out, quant="f16", force=True, quiet=True)  # an empty folder
    first = (out / "manifest.json").read_text()
    convert(str(tiny_ckpt), out, quant="f32", force=True, quiet=True)  # a converted model
    assert (out / "manifest.json").read_text() != first and (out / "llm-f32.gguf").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing moved aside is left


def _hash_tree(root):
    from mufun_local.format.model_dir import hash_tree
    return hash_tree(root)


@pytest.mark.parametrize("where", ["src", "inside", "parent", "user-folder", "file"])
def test_force_never_deletes_what_is_not_a_model(capsys, tmp_path, tiny_ckpt, where):
    """`convert ./ckpt ./ckpt --force`, `. --force` and the like: refused, nothing touched."""
    src = _copy_ckpt(tiny_ckpt, tmp_path)
    out = {"src": src, "inside": src / "model", "parent": tmp_path, "user-folder": tmp_path / "mine",
           "file": tmp_path / "notes.txt"}[where]
    if where == "user-folder":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if where == "file":
        out.write_text("mine")
    before = _hash_tree(tmp_path)
    code = main(["convert", str(src), str(out), "--quant", "f16", "--force", "-q"])
    err = capsys.readouterr().err
    assert code != 0, err
    if where == "file":  # click's own check of OUT's type
        assert "is a file" in err
    else:
        assert len(err.strip().splitlines()) == 1, err
        assert ("outside the checkpoint" if where in ("src", "inside", "parent") else "not a converted model") in err
    assert _hash_tree(tmp_path) == before
def test_interrupted_conversion_leaves_nothing(tmp_path, tiny_ckpt, monkeypatch):
    import mufun_local.convert.run as run

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(run, "write_gguf", boom)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(str(tiny_ckpt), out, quant="f16", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_offline_hub_id_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match="hf download Yi3852/MuFun-Base"):
        convert("Yi3852/MuFun-Base", tmp_path / "out", quiet=True, fetch=fetch_checkpoint)
    assert not (tmp_path / "out").exists()


def test_hub_cache_layout_is_found(tmp_path, monkeypatch, tiny_ckpt):
    """A checkpoint in huggingface_hub's cache layout resolves by its hub id, offline."""
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--Yi3852--MuFun-Base"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_ckpt, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(snap.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub), raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    out = convert("Yi3852/MuFun-Base", tmp_path / "out", quant="f16", quiet=True, fetch=fetch_checkpoint)
    m = ModelDir.open(out).manifest
    assert m["source"] == {"id": "Yi3852/MuFun-Base", "revision": snap.name}


@pytest.mark.small
def test_small_preset_converts_and_loads(small_model):
    out = small_model
    md = ModelDir.open(out)
    for name in (md.manifest["llm"]["file"], "llm-f16.gguf"):
        llm = LLM(out / name)
        llm.open_context(256)
        llm.eval_tokens(llm.tokenize("A chat between a curious user"))
        assert llm.n_embd == 1024 and np.isfinite(llm.logits()).all()
        llm.close()


def test_a_killed_conversions_leftovers_are_removed(tmp_path, tiny_ckpt):
    """`.OUT.partial-PID` of a process that is gone goes at the next conversion; one of a
    running process stays."""
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "out"
    stale, running = tmp_path / f".out.partial-{dead}", tmp_path / f".out.partial-{os.getppid()}"
    for d in (stale, running):
        d.mkdir()
        (d / "llm-f16.gguf").write_bytes(b"half")
    convert(str(tiny_ckpt), out, quant="f16", quiet=True)
    assert not stale.exists() and running.exists() and (out / "manifest.json").is_file()


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("case,match", [
    ("index-escapes", "not a shard file name"),
    ("index-absolute", "not a shard file name"),
    ("huge-layers", "llm_layers = 1000000000 is outside"),
    ("zero-heads", "outside|invalid"),
    ("header-garbage", "malformed header entry"),
    ("header-negative", "negative"),
])
def test_hostile_checkpoint_metadata_is_refused(tmp_path, tiny_ckpt, case, match):
    src = _copy_ckpt(tiny_ckpt, tmp_path)
    index = src / "model.safetensors.index.json"
    if case == "index-escapes":
        (tmp_path / "x.safetensors").write_bytes(b"")
        _edit_json(index, lambda d: d["weight_map"].update({next(iter(d["weight_map"])): "../x.safetensors"}))
    elif case == "index-absolute":
        _edit_json(index, lambda d: d["weight_map"].update({next(iter(d["weight_map"])): "/etc/passwd"}))
    elif case == "huge-layers":
        _edit_json(src / "config.json", lambda d: d["text_config"].update(num_hidden_layers=10 ** 9))
    elif case == "zero-heads":
        _edit_json(src / "config.json", lambda d: d["text_config"].update(num_attention_heads=0))
    else:
        shard = src / json.loads(index.read_text())["weight_map"]["language_model.model.norm.weight"]
        raw = shard.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        name = "language_model.model.norm.weight"
        header[name] = ({"dtype": "F32", "shape": "oops", "data_offsets": [0, 4]} if case == "header-garbage"
                        else {**header[name], "shape": [-1, -4]})
        new = json.dumps(header).encode()
        new += b" " * (n - len(new)) if len(new) <= n else b""
        shard.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:])
    _refused(src, tmp_path / "out", match)


def test_control_looking_tokens_are_control_and_loading_is_quiet(tiny_q4, audio_dir):
    """Qwen3 marks <|fim_prefix|> and five others not special; typed CONTROL as llama.cpp's
    own converter does, so its loader does not warn on every load. llama.cpp's log lines
    appear with -v only."""
    import subprocess
    import sys

    from gguf import GGUFReader

    from mufun_local.convert.write_gguf import looks_special
    assert looks_special("<|fim_prefix|>") and looks_special("<\uff5cbegin\uff5c>") and not looks_special("<think>")
    r = GGUFReader(str(ModelDir.open(tiny_q4).llm_file))
    toks, types = r.fields["tokenizer.ggml.tokens"], r.fields["tokenizer.ggml.token_type"]
    typed = {bytes(toks.parts[i]).decode(): int(types.parts[j][0]) for i, j in zip(toks.data, types.data)}
    assert all(typed[t] == 3 for t in ("<|fim_prefix|>", "<|file_sep|>", "<|endoftext|>"))  # CONTROL
    assert typed["<think>"] == 4  # USER_DEFINED: matched in text, as transformers does
    cmd = [sys.executable, "-m", "mufun_local", "ask", "-m", str(tiny_q4), str(audio_dir / "song22k.flac"),
           "Genre?", "--max-tokens", "2", "--no-cache"]
    quiet = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = subprocess.run(cmd + ["-v"], capture_output=True, text=True, timeout=300)
    assert "llama_model_loader" in loud.stderr and "control-looking" not in loud.stderr


def test_an_instruct_release_converts_with_its_template_and_chat_follows_it(tmp_path, tiny_ckpt, audio_dir):
    """A checkpoint folder named like the release (or --template) gets qwen2_instruct in its
    manifest; chat's later turns end the answer with <|im_end|>; ask is unchanged."""
    from mufun_local.model import Model
    from mufun_local.options import Request
    src = shutil.copytree(tiny_ckpt, tmp_path / "MuFun-Instruct")
    out = convert(str(src), tmp_path / "instruct", quant="f16", quiet=True)
    md = ModelDir.open(out)
    assert md.manifest["prompt"]["variant"] == "qwen2_instruct" and md.manifest["prompt"]["turn_end"] == "<|im_end|>"
    base = convert(str(tiny_ckpt), tmp_path / "base", quant="f16", quiet=True)
    assert ModelDir.open(base).manifest["prompt"]["variant"] == "qwen2_base"
    song = str(audio_dir / "song22k.flac")
    answers = []
    for model in (out, base):
        with Model(ModelDir.open(model), caches=None) as m:
            answers.append(m.ask(song, "Genre?", request=Request(4)).text())
    assert answers[0] == answers[1]  # one question: the chat() wrapper, the same for every release
    with Model(md, caches=None) as m:
        chat = m.chat(2048, request=Request(3))
        chat.add_audio(song)
        chat.send("Genre?").text()
        prompt_tokens = chat.send("Mood?").usage()["prompt_tokens"]
        assert prompt_tokens == len(m.pipeline.llm.tokenize("<|im_end|>USER: Mood? ASSISTANT:"))


def test_quant_mixes_keep_output_and_embeddings(tmp_path, tiny_ckpt, tiny_q4, capsys):
    """--output-type / --embedding-type keep lm_head / the token embeddings at that type in a
    quantized GGUF (read back with gguf's reader); the manifest and `info` say so."""
    import gguf

    def types(model):
        r = gguf.GGUFReader(str(ModelDir.open(model).llm_file))
        return {t.name: t.tensor_type for t in r.tensors}

    out = convert(str(tiny_ckpt), tmp_path / "mix", quant="q4_k_m", output_type="f16", embedding_type="q8_0",
                  quiet=True)
    mixed, plain = types(out), types(tiny_q4)
    assert mixed["output.weight"] == gguf.GGMLQuantizationType.F16 != plain["output.weight"]
    assert mixed["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0 != plain["token_embd.weight"]
    assert mixed["blk.0.ffn_up.weight"] == plain["blk.0.ffn_up.weight"]  # the rest is the mix's own
    llm = ModelDir.open(out).manifest["llm"]
    assert (llm["output_type"], llm["embedding_type"]) == ("f16", "q8_0")
    assert main(["info", str(out)]) == 0
    assert "Qwen3 q4_k_m, output f16, embeddings q8_0" in capsys.readouterr().out
    with pytest.raises(ModelError, match="--output-type q8_0: give q8_0 or q6_k or f16, with a quantized --quant"):
        convert(str(tiny_ckpt), tmp_path / "bad", quant="f16", output_type="q8_0", quiet=True)
    assert not (tmp_path / "bad").exists()


def test_the_int8_quantizers_scratch_stays_inside_the_conversion(tmp_path, tiny_ckpt, monkeypatch):
    """ONNX Runtime's quantizer makes a multi-GB scratch folder with tempfile: it is made in
    the conversion's temporary folder (which a killed run's successor removes), not /tmp."""
    import tempfile

    import onnxruntime.quantization as q
    seen, real = [], q.quantize_dynamic
    monkeypatch.setattr(q, "quantize_dynamic", lambda *a, **k: seen.append(tempfile.gettempdir()) or real(*a, **k))
    before = tempfile.gettempdir()
    convert(str(tiny_ckpt), tmp_path / "m", quant="f16", encoder_backends=("onnx",), onnx_int8=True, quiet=True)
    assert len(seen) == 1 and f".m.partial-{os.getpid()}" in seen[0]
    assert tempfile.gettempdir() == before


def test_a_conversion_that_cannot_fit_is_refused_before_it_starts(tmp_path, tiny_ckpt, monkeypatch, capsys):
    """Both sizes in one line, before any long work (nothing written); F16 needs less than
    a quantized type, which is made through an F16 GGUF."""
    from mufun_local import diskspace
    from mufun_local.convert.run import space_needed
    ckpt = Checkpoint(tiny_ckpt)
    backends = ("ctranslate2", "onnx")
    assert space_needed(ckpt, "f16", "float16", backends, False) < space_needed(ckpt, "q4_k_m", "float16", backends, False)
    monkeypatch.setattr(diskspace, "free_bytes", lambda p: 1_000_000)
    assert main(["convert", str(tiny_ckpt), str(tmp_path / "new" / "out"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "1.0 MB free on its file system, converting to" in err and "needs about" in err
    assert list(tmp_path.iterdir()) == []


def test_a_disk_that_fills_during_the_conversion_is_one_line(tmp_path, tiny_ckpt, monkeypatch, capsys):
    import errno
    import mufun_local.convert.run as run

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(run, "write_connector", full)
    assert main(["convert", str(tiny_ckpt), str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path}: no space left on its file system (No space left on device)"
    assert list(tmp_path.iterdir()) == []


def _tmpfs(path, size):
    import subprocess
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")


@pytest.mark.parametrize("size", ["1m", "3m"])
def test_a_real_full_file_system_is_one_line_and_leaves_nothing(tmp_path, tiny_ckpt, monkeypatch, size):
    """A small tmpfs that the space check is told to trust: each writer that hits the full
    disk (the encoder's, safetensors', llama.cpp's) ends in the same one line."""
    import subprocess
    from mufun_local import diskspace
    fs = tmp_path / "fs"
    _tmpfs(fs, size)
    try:
        monkeypatch.setattr(diskspace, "require", lambda *a, **k: None)
        with pytest.raises(ModelError, match=f"{fs}: (no space left on its file system|its file system is full)"):
            convert(str(tiny_ckpt), fs / "out", quant="q4_k_m", quiet=True)
        assert list(fs.iterdir()) == []
    finally:
        subprocess.run(["umount", str(fs)])


def test_the_quantizer_says_why_it_failed(tmp_path, tiny_f16):
    """llama.cpp's own reason, not its return code; on a full disk, that the disk is full."""
    import subprocess
    from mufun_local.convert.write_gguf import quantize
    f16 = ModelDir.open(tiny_f16).llm_file
    with pytest.raises(ModelError, match=r"llama.cpp failed to quantize to q4_k_m: (?!code)"):
        quantize(f16, tmp_path / "no-such-dir" / "x.gguf", "q4_k_m")
    fs = tmp_path / "fs"
    _tmpfs(fs, "64k")
    try:
        with pytest.raises(ModelError, match=f"{fs}: its file system is full .* free\\): llama.cpp failed to quantize"):
            quantize(f16, fs / "x.gguf", "q4_k_m")
    finally:
        subprocess.run(["umount", str(fs)])


def test_the_default_q4_k_m_is_quantized_with_an_importance_matrix(tmp_path, tiny_ckpt, audio_dir):
    """convert's default: q4_k_m with an importance matrix from MuFun prompts (generated
    songs, or the user's --calibration audio), recorded in the manifest; --no-imatrix is
    llama.cpp's plain q4_k_m. Same tensor types either way (so the same speed)."""
    import filecmp

    import gguf
    from mufun_local.format import weights
    assert weights.DEFAULT == "q4_k_m" and weights.get("q4_k_m").imatrix
    common = ["--encoder-backends", "ctranslate2", "-q"]
    assert main(["convert", str(tiny_ckpt), str(tmp_path / "default"), *common]) == 0
    assert main(["convert", str(tiny_ckpt), str(tmp_path / "plain"), "--no-imatrix", *common]) == 0
    assert main(["convert", str(tiny_ckpt), str(tmp_path / "mine"), "--calibration", str(audio_dir / "song22k.flac"),
                 *common]) == 0
    llm = {n: ModelDir.open(tmp_path / n) for n in ("default", "plain", "mine")}
    assert llm["default"].manifest["llm"]["imatrix"] == "4 generated songs, 20 s each"
    assert llm["mine"].manifest["llm"]["imatrix"] == "1 given file(s), 20 s each"
    assert "imatrix" not in llm["plain"].manifest["llm"]
    assert not filecmp.cmp(llm["default"].llm_file, llm["plain"].llm_file, shallow=False)
    assert not filecmp.cmp(llm["default"].llm_file, llm["mine"].llm_file, shallow=False)
    kinds = [{t.name: t.tensor_type for t in gguf.GGUFReader(str(m.llm_file)).tensors} for m in llm.values()]
    assert kinds[0] == kinds[1] == kinds[2]
    assert main(["info", str(tmp_path / "default")]) == 0
    assert not list(tmp_path.glob("mufun-calibration-*"))
