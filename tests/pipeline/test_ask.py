"""`ask` end to end on the tiny preset vs the PyTorch reference (greedy tokens and logits)."""
from __future__ import annotations

import numpy as np
import pytest

from audio_fixtures import have_ffmpeg_cli
from mufun_local.llm import prompt
from mufun_local.format.model_dir import ModelDir
from mufun_local.encoder.embcache import MemoryCache
from mufun_local.errors import MufunError
from mufun_local.llm.llama import LLM, Sampling
from mufun_local.model import Model
from mufun_local.pipeline import AudioInput, Options, Pipeline, Request

needs_ffmpeg = pytest.mark.skipif(not have_ffmpeg_cli(), reason="the reference decodes with the ffmpeg CLI, as the original does")

CASES = [
    (["song44k.wav"], None, "What genre is this song?"),
    (["song22k.flac"], None, "Describe the mood and the instruments."),
    (["long48k.flac"], None, "How does the track develop over time?"),  # two windows
    (["song44k.wav", "song22k.flac"], None, "<audio> This is song1. <audio> This is song2. Which is faster?"),
    (["long48k.flac"], [(2.0, 9.5)], "What happens in this part?"),
]


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run(model_dir, files, segs, question, max_tokens=12, sampling=None, **opts):
    """The answer through the public API (mufun_local.Model), streamed, then its result."""
    req = Request(max_tokens, sampling or Sampling(temperature=0.0), keep_logits=True)
    with Model(ModelDir.open(model_dir), caches=None, device="cpu", compute_type="float32", f32_kv=True,
               **opts) as model:
        answer = model.ask(files, question, segs=segs, request=req)
        text = "".join(answer)
        res = answer.result()
        assert text == res.text == answer.text()
        return res


@needs_ffmpeg
@pytest.mark.parametrize("files,segs,question", CASES)
def test_greedy_tokens_equal_reference_f32(tiny_f32, reference, audio_dir, files, segs, question):
    paths = [str(audio_dir / f) for f in files]
    ours = run(tiny_f32, paths, segs, question)
    theirs = reference.ask(paths, question, segs=segs, max_tokens=12)
    assert ours.audio_tokens == theirs.audio_tokens
    assert ours.prompt_tokens == theirs.prompt_tokens
    assert rel(ours.first_logits, theirs.first_logits) <= 1e-4
    assert ours.tokens == theirs.tokens


@needs_ffmpeg
def test_f16_gguf_within_tolerance(tiny_f16, reference, audio_dir):
    """F16 weights: first-step logits within 1e-2 relative and the same first token."""
    paths = [str(audio_dir / "song44k.wav")]
    ours = run(tiny_f16, paths, None, "What genre is this song?")
    theirs = reference.ask(paths, "What genre is this song?", max_tokens=12)
    assert rel(ours.first_logits, theirs.first_logits) <= 1e-2
    assert ours.tokens[0] == theirs.tokens[0]


def test_embedding_path_equals_token_path(tiny_f32, reference):
    """Token rows fed as embeddings give the same logits as the tokens themselves."""
    md = ModelDir.open(tiny_f32)
    llm = LLM(md.llm_file)
    llm.open_context(512, 64, f32_kv=True)
    ids = llm.tokenize(reference.prompt("What genre?").replace("<audio>", "")) * 2
    table = reference.llm.get_input_embeddings().weight.detach().numpy()
    llm.eval_tokens(ids)
    by_tokens = llm.logits()
    llm.reset()
    llm.eval_embeddings(table[ids], logits_at_end=True)
    by_embeddings = llm.logits()
    np.testing.assert_allclose(by_embeddings, by_tokens, rtol=0, atol=1e-5 * np.abs(by_tokens).max())
    llm.close()


@pytest.mark.parametrize("n", [63, 64, 65])
def test_batch_split_boundaries(tiny_f32, n):
    """Embedding runs of n_batch-1, n_batch, n_batch+1 rows give the same logits as one batch."""
    md = ModelDir.open(tiny_f32)
    emb = np.random.default_rng(n).standard_normal((n, 64)).astype(np.float32)
    out = []
    for n_batch in (64, 512):
        llm = LLM(md.llm_file)
        llm.open_context(512, n_batch, f32_kv=True)
        llm.eval_tokens(llm.tokenize("A chat"), logits_at_end=False)
        llm.eval_embeddings(emb)
        llm.eval_tokens(llm.tokenize(" ASSISTANT:"))
        assert llm.n_past == n + len(llm.tokenize("A chat")) + len(llm.tokenize(" ASSISTANT:"))
        out.append(llm.logits())
        llm.close()
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-5 * np.abs(out[1]).max())


def test_overflow_is_refused_before_compute(tiny_f32, audio_dir):
    pipe = Pipeline(ModelDir.open(tiny_f32), Options(device="cpu", n_ctx=256))
    with pytest.raises(MufunError, match=r"no audio fits: .* a larger --ctx"):
        list(pipe.ask([AudioInput(str(audio_dir / "song44k.wav"))], "What genre?", Request(8)))
    assert not pipe.audio.loaded, "the encoder must not run for a request that cannot fit"
    pipe.close()


def test_context_sized_to_request(tiny_q4, audio_dir):
    pipe = Pipeline(ModelDir.open(tiny_q4), Options(device="cpu"))
    res = pipe.ask([AudioInput(str(audio_dir / "long48k.flac"))], "What genre?", Request(20)).result()
    assert res.audio_tokens == 600
    need = res.prompt_tokens + res.audio_tokens + 20
    assert need <= pipe.llm.n_ctx < need + 256
    assert set(res.timings) >= {"decode", "features", "encoder", "connector", "prefill", "generate"}
    pipe.close()


def test_sampling_is_seeded(tiny_q4, audio_dir):
    def answer(seed):
        return run(tiny_q4, [str(audio_dir / "song22k.flac")], None, "Mood?",
                   sampling=Sampling(temperature=0.9, top_k=40, top_p=0.95, seed=seed), max_tokens=16).tokens
    a, b, c = answer(1), answer(1), answer(2)
    assert a == b
    assert a != c


def test_repeated_asks_reset_the_cache(tiny_f32, audio_dir):
    md = ModelDir.open(tiny_f32)
    pipe = Pipeline(md, Options(device="cpu", compute_type="float32", f32_kv=True, n_ctx=1024))
    item = [AudioInput(str(audio_dir / "song22k.flac"))]
    req = Request(8, keep_logits=True)
    first, second = (pipe.ask(item, "Genre?", req).result() for _ in range(2))
    first, second = (first.text, first.first_logits), (second.text, second.first_logits)
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    pipe.close()


def test_marker_count_must_match(tiny_q4, audio_dir):
    pipe = Pipeline(ModelDir.open(tiny_q4), Options(device="cpu"))
    with pytest.raises(MufunError, match="marker"):
        list(pipe.ask([AudioInput(str(audio_dir / "song22k.flac"))], "<audio> and <audio>?", Request(4)))
    pipe.close()


@needs_ffmpeg
def test_default_attention_and_kv_keep_a_long_prefix_exact(tiny_f16, reference, tmp_path):
    """The default context settings (F16 KV cache, flash attention off) on a 1,200-row audio
    prefix stay within 1e-3 of the reference's first-step logits, relative (F16 GGUF, float32
    encoder, so only the LLM's settings count); llama.cpp's CPU flash attention (opt-in)
    is measured beside them and does not meet that bound."""
    from audio_fixtures import music, write_audio
    song = write_audio(tmp_path / "long.flac", music(118.0, 16000, 1, seed=9), 16000)
    question = "How does the track develop over time?"
    theirs = reference.ask([str(song)], question, max_tokens=1)
    errors, embeddings = {}, MemoryCache()  # the song is encoded once: only the LLM's settings differ
    for flash in (False, True):
        pipe = Pipeline(ModelDir.open(tiny_f16), Options(device="cpu", compute_type="float32", flash_attn=flash),
                        cache=embeddings)
        res = pipe.ask([AudioInput(str(song))], question, Request(1, keep_logits=True)).result()
        assert res.audio_tokens == 1200
        errors[flash] = rel(res.first_logits, theirs.first_logits)
        pipe.close()
    print(f"relative logit error: flash attention off {errors[False]:.2e}, on {errors[True]:.2e}")
    # measured here: off 3.1e-4, on 7.2e-3; the bound sits between them, well inside 1e-2
    assert errors[False] <= 1e-3 < errors[True]


def test_llm_weights_load_after_the_encoder_is_gone(tiny_q4, audio_dir, monkeypatch):
    """llama.cpp maps the whole GGUF in at load; a one-shot ask must not hold it and the
    encoder at once (tokenizing and sizing use the vocabulary alone)."""
    import mufun_local.llm.llama as llm_mod
    seen = []

    class Spy(llm_mod.LLM):
        def __init__(self, *a, **kw):
            seen.append(not pipe.audio.loaded)
            super().__init__(*a, **kw)
    monkeypatch.setattr(llm_mod, "LLM", Spy)
    pipe = Pipeline(ModelDir.open(tiny_q4), Options(device="cpu"))
    answer = pipe.ask([AudioInput(str(audio_dir / "song22k.flac"))], "Genre?", Request(3))
    text = "".join(answer)
    assert seen == [True] and answer.result().text == text and pipe._vocab is None
    pipe.close()


@pytest.mark.parametrize("keep", [False, True])
def test_encoder_is_gone_before_the_connector_runs(tiny_q4, audio_dir, monkeypatch, keep):
    """At real size the encoder holds ~5 GB: the connector of the last audio runs without it
    (batch jobs keep it for the next file). The embeddings are the same either way."""
    from mufun_local.encoder.connector import Connector
    seen, real = [], Connector.__call__
    monkeypatch.setattr(Connector, "__call__",
                        lambda self, hs: seen.append(not pipe.audio.encoder_loaded) or real(self, hs))
    req = Request(3, keep_logits=True)
    pipe = Pipeline(ModelDir.open(tiny_q4), Options(device="cpu", keep_audio_models=keep))
    audios = [AudioInput(str(audio_dir / "song22k.flac")), AudioInput(str(audio_dir / "song22k.flac"), segs=(0.0, 2.0))]
    prm = prompt.build("Genre?", 2, pipe.template)
    logits = pipe.complete(prm, audios, req).result().first_logits
    assert seen == [False, not keep]
    pipe.close()
    other = Pipeline(ModelDir.open(tiny_q4), Options(device="cpu", keep_audio_models=not keep))
    np.testing.assert_array_equal(other.complete(prm, audios, req).result().first_logits, logits)
    other.close()


def test_default_encoder_is_no_less_accurate_than_the_originals_bf16(tiny_all, tiny_ckpt, reference, audio_dir,
                                                                     tmp_path, monkeypatch):
    """Whatever `auto` picks here (every engine converted and installed), the default
    settings' first-step logits are no further from the float32 reference than the original's
    own bfloat16 run; int8 (opt-in only) is measured beside them and is further."""
    import torch

    from mufun_reference import ReferenceMuFun
    monkeypatch.setenv("MUFUN_HOME", str(tmp_path))
    song, question = str(audio_dir / "long48k.flac"), "What genre is this?"
    exact = reference.ask([song], question, max_tokens=1).first_logits
    bf16 = ReferenceMuFun(tiny_ckpt, dtype=torch.bfloat16).ask([song], question, max_tokens=1).first_logits
    bound = rel(np.asarray(bf16, np.float32), exact)
    errors = {}
    for label, opts in (("default", {}), ("int8", dict(encoder_backend="onnxruntime", compute_type="int8"))):
        pipe = Pipeline(ModelDir.open(tiny_all), Options(device="cpu", **opts))
        errors[label] = rel(pipe.ask([AudioInput(song)], question, Request(1, keep_logits=True)).result().first_logits,
                            exact)
        errors[label + " engine"] = f"{pipe.audio.choice.backend} {pipe.audio.choice.compute_type}"
        pipe.close()
    print(f"relative logit error: original bf16 {bound:.2e}, ours {errors}")
    assert errors["default"] <= bound < errors["int8"], errors


def test_weight_types_rank_by_precision_and_the_default_is_4_bit(tiny_ckpt, reference, ref, audio_dir, tmp_path):
    """The LLM's weight type is the product's design: the default is a 4-bit recipe. Against
    the float32 reference, `--quant f16` stays within the original's own bfloat16 run, q8_0
    loses more and the 4-bit default more again (random weights misjudge how much: see
    docs/accuracy.md for real-model figures)."""
    import torch

    from mufun_local.convert.run import convert
    from mufun_local.format import weights
    assert weights.get(weights.DEFAULT).bits < 5
    song, question = str(audio_dir / "long48k.flac"), "What genre is this?"
    exact = reference.ask([song], question, max_tokens=1).first_logits
    bf16 = ref.ReferenceMuFun(tiny_ckpt, dtype=torch.bfloat16).ask([song], question, max_tokens=1).first_logits
    bound = rel(np.asarray(bf16, np.float32), exact)
    errors, embeddings = {}, MemoryCache()  # the same encoder files: the song is encoded once
    for quant in ("f16", "q8_0", "default"):
        out = convert(str(tiny_ckpt), tmp_path / quant, encoder_quant="float32", encoder_backends=("ctranslate2",),
                      quiet=True, **({} if quant == "default" else {"quant": quant}))
        pipe = Pipeline(ModelDir.open(out), Options(device="cpu", encoder_backend="ctranslate2",
                                                    compute_type="float32", f32_kv=True), cache=embeddings)
        logits = pipe.ask([AudioInput(song)], question, Request(1, keep_logits=True)).result().first_logits
        errors[quant] = rel(logits, exact)
        pipe.close()
    print(f"relative logit error: original bf16 {bound:.2e}, ours {errors}")
    assert errors["f16"] <= bound, errors
    assert errors["f16"] < errors["q8_0"] < errors["default"], errors
