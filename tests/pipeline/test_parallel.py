"""Several questions about one audio answered side by side (batch): the prefix once, then one
llama_decode per step for all answers; each answer equals the one a lone `ask` gives."""
from __future__ import annotations

import numpy as np
import pytest

from mufun_local.batch import MemoryCache
from mufun_local.errors import MufunError
from mufun_local.llm import Sampling
from mufun_local.pipeline import AudioInput
from helpers import bound_pipe

GREEDY = Sampling(temperature=0.0)
SEEDED = Sampling(temperature=1.2, top_k=50, seed=11)
QUESTIONS = ["Genre?", "Describe the mood and the instruments in detail, please.", "Tempo?",
             "Is there a singer, and in which language does the singer sing?", "Key?"]


def _pipe(model_dir, sampling, **opts):
    return bound_pipe(model_dir, device="cpu", compute_type="float32", max_tokens=12, sampling=sampling,
                      keep_logits=True, **opts)


# A lone ask's pipeline is new each time, but the song's embeddings come from this cache after
# the first: the same arrays (test_chat_cache checks a cached embedding gives the computed
# answer), without encoding the song again for every question.
_EMBEDDINGS = MemoryCache(entries=16)


def _lone(model_dir, song, question, sampling):
    pipe = _pipe(model_dir, sampling, cache=_EMBEDDINGS)
    try:
        return pipe.ask([AudioInput(str(song))], question).finish()
    finally:
        pipe.close()


@pytest.mark.parametrize("model", ["tiny_f32", "tiny_q4"])
@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_side_by_side_answers_equal_lone_ones(request, audio_dir, model, sampling):
    model_dir = request.getfixturevalue(model)
    song = audio_dir / "long48k.flac"
    pipe = _pipe(model_dir, sampling)
    import llama_cpp
    calls, real = [], llama_cpp.llama_decode
    llama_cpp.llama_decode = lambda ctx, batch: calls.append(batch.n_tokens) or real(ctx, batch)
    try:
        results = pipe.ask_many([AudioInput(str(song))], QUESTIONS, parallel=5)
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
    pipe.close()


def test_groups_and_reuse_of_the_context(tiny_q4, audio_dir):
    """More questions than `parallel`: answered in groups over one prefix; a later lone ask
    and another file still give their lone answers."""
    song, other = audio_dir / "long48k.flac", audio_dir / "song22k.flac"
    pipe = _pipe(tiny_q4, GREEDY, keep_audio_models=True)
    rows, real = [], pipe.llm.eval_embeddings

    def counting(emb, *a, **kw):
        rows.append(len(emb))
        return real(emb, *a, **kw)
    pipe.llm.eval_embeddings = counting
    results = pipe.ask_many([AudioInput(str(song))], QUESTIONS, parallel=2)
    assert rows == [600], "the audio is evaluated once for all groups"
    assert [r.tokens for r in results] == [_lone(tiny_q4, song, q, GREEDY).tokens for q in QUESTIONS]
    assert pipe.ask([AudioInput(str(other))], "Genre?").finish().tokens == _lone(tiny_q4, other, "Genre?", GREEDY).tokens
    again = pipe.ask_many([AudioInput(str(other))], QUESTIONS[:3])
    assert [r.tokens for r in again] == [_lone(tiny_q4, other, q, GREEDY).tokens for q in QUESTIONS[:3]]
    pipe.close()


def test_too_long_for_the_context_fails_before_any_compute(tiny_q4, audio_dir):
    pipe = _pipe(tiny_q4, GREEDY, n_ctx=512)
    with pytest.raises(MufunError, match="too long for the context"):
        pipe.ask_many([AudioInput(str(audio_dir / "long48k.flac"))], QUESTIONS)
    assert pipe.session.loaded is None
    pipe.close()
