"""The importance matrix collected from MuFun prompts, against numpy: the input of the first
block's attention projections is the RMS-normed audio rows times the block's norm weight."""
from __future__ import annotations

import numpy as np
import pytest

from mufun_local.store import imatrix
from mufun_local.errors import ModelError
from mufun_local.format.model_dir import ModelDir


def _prompts(llm_file, n_rows=(40, 24), seed=0):
    from mufun_local.llm.llama import Vocab
    v = Vocab(llm_file)
    head = v.tokenize("A chat between a curious user and an artificial intelligence assistant. USER: ")
    tail = v.tokenize(" What genre is this? ASSISTANT:")
    v.close()
    rng = np.random.default_rng(seed)
    hidden = ModelDir.open(llm_file.parent).manifest["dims"]["hidden"]
    return [(head, (rng.standard_normal((n, hidden)) * 0.5).astype(np.float32), tail) for n in n_rows]


def test_first_block_matches_numpy(tiny_f32):
    import gguf
    md = ModelDir.open(tiny_f32)
    audio_only = [([], e, []) for _, e, _ in _prompts(md.llm_file)]
    im = imatrix.collect(md.llm_file, audio_only)
    r = gguf.GGUFReader(str(md.llm_file))
    norm = next(np.array(t.data, dtype=np.float64) for t in r.tensors if t.name == "blk.0.attn_norm.weight")
    eps = float(r.fields["qwen3.attention.layer_norm_rms_epsilon"].parts[-1][0])
    rows = np.concatenate([e for _, e, _ in audio_only]).astype(np.float64)
    x = rows / np.sqrt((rows ** 2).mean(-1, keepdims=True) + eps) * norm
    want = (x ** 2).mean(0)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        np.testing.assert_allclose(im[name], want, rtol=1e-4)
    layers = md.manifest["dims"]["llm_layers"]
    # every matrix of every block, the last one's too (every row's logits are asked for)
    kinds = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    assert set(im) == {f"blk.{i}.{k}.weight" for i in range(layers) for k in kinds}


def test_text_and_audio_prompts_and_the_quantizer_takes_it(tmp_path, tiny_f16):
    import filecmp
    from mufun_local.convert.write_gguf import quantize
    from mufun_local.llm.llama import LLM
    md = ModelDir.open(tiny_f16)
    im = imatrix.collect(md.llm_file, _prompts(md.llm_file))
    imatrix.save(tmp_path / "im.npz", im)
    back = imatrix.load(tmp_path / "im.npz")
    assert back.keys() == im.keys() and all(np.array_equal(back[k], im[k]) for k in im)
    quantize(md.llm_file, tmp_path / "with.gguf", "q4_k_m", imatrix=back)
    quantize(md.llm_file, tmp_path / "without.gguf", "q4_k_m")
    assert not filecmp.cmp(tmp_path / "with.gguf", tmp_path / "without.gguf", shallow=False)
    llm = LLM(tmp_path / "with.gguf")
    llm.open_context(128)
    llm.eval_tokens(llm.tokenize("A chat between"))
    assert np.isfinite(llm.logits()).all()
    llm.close()


def test_a_damaged_file_and_short_prompts_are_one_line_errors(tmp_path, tiny_f16):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not an importance matrix"):
        imatrix.load(tmp_path / "bad.npz")
    md = ModelDir.open(tiny_f16)
    short = [(h[:4], e[:3], t[:2]) for h, e, t in _prompts(md.llm_file)]  # under 16 rows: nothing is kept
    with pytest.raises(ModelError, match="no matrix product was seen"):
        imatrix.collect(md.llm_file, short)
