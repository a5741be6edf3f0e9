"""CTranslate2 encoder (hidden states 0/7/15/32) and connector vs transformers' WhisperEncoder."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from audio_fixtures import music
from mufun_local import features
from mufun_local.artifacts import ModelDir
from mufun_local.connector import Connector, pool
from mufun_local.encoder import Encoder


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def cosine_rows(a, b) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def mel():
    windows = [music(30.0, 16000, 1, seed=5)[:, 0], music(12.0, 16000, 1, seed=6)[:, 0]]
    return features.log_mel(windows)


@pytest.fixture(scope="module")
def ref_states(reference, mel):
    return [h.numpy() for h in reference.hidden_states(torch.from_numpy(mel))]


def _parts(model_dir, compute_type, batch=4):
    md = ModelDir.open(model_dir)
    enc = Encoder(md.encoder_dir, "cpu", compute_type, threads=2, batch_size=batch)
    con = Connector(md.connector_file, md.manifest["connector"]["pool_stride"])
    return enc, con


def test_float32_hidden_states_match(tiny_f32, mel, ref_states):
    enc, _ = _parts(tiny_f32, "float32")
    hs = enc.hidden_states(mel)
    for ours, theirs in zip(hs.as_list(), ref_states):
        assert ours.shape == theirs.shape == (2, 1500, 64)
        assert rel(ours, theirs) <= 1e-5


def test_float32_embeddings_match(tiny_f32, reference, mel):
    enc, con = _parts(tiny_f32, "float32")
    ours = con(enc.hidden_states(mel))
    theirs = reference.embed_windows(torch.from_numpy(mel)).numpy()
    assert ours.shape == theirs.shape == (600, 64)
    assert rel(ours, theirs) <= 1e-5


def test_int8_within_tolerance(tiny_f32, reference, mel, ref_states):
    enc, con = _parts(tiny_f32, "int8")
    hs = enc.hidden_states(mel)
    assert rel(hs.hs32, ref_states[3]) <= 5e-2
    emb = con(hs)
    theirs = reference.embed_windows(torch.from_numpy(mel)).numpy()
    assert cosine_rows(emb, theirs).min() >= 0.99


def test_batches_equal_single_windows(tiny_f32, mel):
    enc1, _ = _parts(tiny_f32, "float32", batch=1)
    enc2, _ = _parts(tiny_f32, "float32", batch=2)
    a, b = enc1.hidden_states(mel), enc2.hidden_states(mel)
    for x, y in zip(a.as_list(), b.as_list()):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * np.abs(y).max())


def test_pool_equals_avgpool1d():
    x = np.random.default_rng(0).standard_normal((2, 1500, 8)).astype(np.float32)
    theirs = torch.nn.functional.avg_pool1d(torch.from_numpy(x).permute(0, 2, 1), 5, 5).permute(0, 2, 1)
    np.testing.assert_allclose(pool(x, 5), theirs.numpy(), atol=1e-6)


def test_float16_storage_default(tiny_q4, tiny_f32, mel):
    """The default conversion stores float16 weights; any compute type still loads."""
    enc16, _ = _parts(tiny_q4, "float32")
    enc32, _ = _parts(tiny_f32, "float32")
    assert rel(enc16.hidden_states(mel).hs32, enc32.hidden_states(mel).hs32) < 1e-2


@pytest.mark.skipif(os.environ.get("MUFUN_SKIP_SMALL") == "1", reason="MUFUN_SKIP_SMALL=1")
def test_real_encoder_dims(small_encoder, mel):
    """Whisper-large-v3 dims (small preset): float32 within 1e-5 at every hidden state."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    ckpt, enc_dir = small_encoder
    from mufun_local.convert.checkpoint import Checkpoint
    c = Checkpoint(ckpt)
    ref = WhisperEncoder(WhisperConfig(**c.config["vision_config"])).eval()
    state = {k[len("vision_tower._vision_tower."):]: torch.from_numpy(c.get(k))
             for k in c.tensors if k.startswith("vision_tower._vision_tower.")}
    ref.load_state_dict(state)
    x = mel[:1]
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x), output_hidden_states=True).hidden_states
    enc = Encoder(enc_dir, "cpu", "float32", threads=2)
    ours = enc.hidden_states(x)
    for o, i in zip(ours.as_list(), (0, 7, 15, 32)):
        assert rel(o, theirs[i].numpy()) <= 1e-5, i
    int8 = Encoder(enc_dir, "cpu", "int8", threads=2).hidden_states(x)
    assert rel(int8.hs32, theirs[32].numpy()) <= 5e-2
