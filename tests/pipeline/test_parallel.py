"""Several questions about one audio answered side by side (batch): the prefix once, then one
llama_decode per step for all answers; each answer equals the one a lone `ask` gives."""
from __future__ import annotations

import numpy as np
import pytest

from mufun_local.encoder.embcache import MemoryCache
from mufun_local.errors import MufunError
from mufun_local.llm.llama import Sampling
from mufun_local.options import Request
from helpers import open_model

GREEDY = Sampling(temperature=0.0)
SEEDED = Sampling(temperature=1.2, top_k=50, seed=11)
QUESTIONS = ["Genre?", "Describe the mood and the instruments in detail, please.", "Tempo?",
             "Is there a singer, and in which language does the singer sing?", "Key?"]


def _model(model_dir, cache=None, **opts):
    return open_model(model_dir, cache, device="cpu", compute_type="float32", **opts)


def _req(sampling):
    return Request(12, sampling, keep_logits=True)


# A lone ask's pipeline is new each time, but the song's embeddings come from this cache after
# the first: the same arrays (test_chat_cache checks a cached embedding gives the computed
# answer), without encoding the song again for every question.
_EMBEDDINGS = MemoryCache(entries=16)


def _lone(model_dir, song, question, sampling):
    with _model(model_dir, _EMBEDDINGS) as model:
        return model.ask(song, question, request=_req(sampling)).result()


@pytest.mark.parametrize("model", ["tiny_f32", "tiny_q4"])
@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_side_by_side_answers_equal_lone_ones(request, audio_dir, model, sampling):
    model_dir = request.getfixturevalue(model)
    song = audio_dir / "long48k.flac"
    model = _model(model_dir)
    import llama_cpp
    calls, real = [], llama_cpp.llama_decode
    llama_cpp.llama_decode = lambda ctx, batch: calls.append(batch.n_tokens) or real(ctx, batch)
    try:
        results = model.ask_many(song, QUESTIONS, request=_req(sampling), parallel=5)
    finally:
        llama_cpp.llama_decode = real
    assert len(results) == len(QUESTIONS)
    longest = max(len(r.tokens) for r in results)
    # after the prefix (system text, 600 audio rows in batches of 512) and the 5 tails, one
    # decode per step holding every answer not yet finished
    steps = [sum(len(r.tokens) > i for r in results) for i in range(1, longest)]
    assert calls[3 + len(QUESTIONS):] == steps and steps[0] == 5
    for q, r in zip(QUESTIONS, results):
        lone = _lone(model_dir, song, q, sampling)
        assert r.tokens == lone.tokens and r.text == lone.text and r.stopped == lone.stopped, q
        np.testing.assert_array_equal(r.first_logits, lone.first_logits)
        assert (r.prompt_tokens, r.audio_tokens) == (lone.prompt_tokens, lone.audio_tokens)
    model.close()


def test_groups_and_reuse_of_the_context(tiny_q4, audio_dir):
    """More questions than `parallel`: answered in groups over one prefix; a later lone ask
    and another file still give their lone answers."""
    song, other = audio_dir / "long48k.flac", audio_dir / "song22k.flac"
    model = _model(tiny_q4, keep_audio_models=True)
    llm, req = model.pipeline.llm, _req(GREEDY)
    rows, real = [], llm.eval_embeddings

    def counting(emb, *a, **kw):
        rows.append(len(emb))
        return real(emb, *a, **kw)
    llm.eval_embeddings = counting
    results = model.ask_many(song, QUESTIONS, request=req, parallel=2)
    assert rows == [600], "the audio is evaluated once for all groups"
    assert [r.tokens for r in results] == [_lone(tiny_q4, song, q, GREEDY).tokens for q in QUESTIONS]
    assert model.ask(other, "Genre?", request=req).result().tokens == _lone(tiny_q4, other, "Genre?", GREEDY).tokens
    again = model.ask_many(other, QUESTIONS[:3], request=req)
    assert [r.tokens for r in again] == [_lone(tiny_q4, other, q, GREEDY).tokens for q in QUESTIONS[:3]]
    model.close()


def test_too_long_for_the_context_fails_before_any_compute(tiny_q4, audio_dir):
    model = _model(tiny_q4, n_ctx=512)
    with pytest.raises(MufunError, match="too long for the context"):
        model.ask_many(audio_dir / "long48k.flac", QUESTIONS, request=_req(GREEDY))
    assert model.pipeline.session.loaded is None
    model.close()
