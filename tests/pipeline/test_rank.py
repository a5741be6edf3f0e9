"""Ranking a vocabulary (Model.rank): each term's probability as the whole answer, scored as
one token trie side by side, against the oracle: term by term, from the full-vocabulary logits
of fresh teacher-forced runs (Model.forced_logits)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import open_model
from mufun_local.errors import MufunError
from mufun_local.llm import prompt as prompt_mod

QUESTION = "What is the genre of this music?"
# shared starts ("Rock", "Rock and Roll"; "Pop", "Pop Rock"), one term the prefix of another
TERMS = ["Rock", "Rock and Roll", "Jazz", "Hip Hop", "Classical", "Electronic", "Pop", "Pop Rock", "Folk, World, & Country"]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


def oracle(model, song, terms) -> np.ndarray:
    """Each term's log-probability from fresh runs, one term at a time."""
    pipe = model.pipeline
    out = []
    for t in terms:
        ids = prompt_mod.answer_ids(t, pipe.template, pipe.tokenizer.tokenize)
        ls = log_softmax(model.forced_logits(song, QUESTION, ids))
        out.append(sum(ls[i, tok] for i, tok in enumerate(ids)))
    return np.array(out)


@pytest.mark.parametrize("per_round", [32, 3], ids=["one round", "rounds of 3"])
def test_ranks_equal_the_term_by_term_oracle(tiny_f32, audio_dir, per_round, monkeypatch):
    song = audio_dir / "song22k.flac"
    from mufun_local import pipeline
    monkeypatch.setattr(pipeline, "PER_ROUND", per_round)
    with open_model(tiny_f32, device="cpu", compute_type="float32", f32_kv=True) as model:
        ranked = model.rank(song, QUESTION, TERMS)
        expected = oracle(model, song, TERMS)
    p = np.exp(expected - expected.max())
    p /= p.sum()
    want = dict(zip(TERMS, p))
    assert [t for t, _ in ranked] == sorted(TERMS, key=lambda t: -want[t])
    assert abs(sum(v for _, v in ranked) - 1) < 1e-9
    for term, prob in ranked:
        assert abs(prob - want[term]) <= 1e-6 + 1e-4 * want[term], term


def test_quantized_model_and_the_context_kept_for_the_next_question(tiny_q4, audio_dir):
    """On the default 4-bit model too; the audio prefix stays for a later question."""
    song = audio_dir / "song22k.flac"
    with open_model(tiny_q4, device="cpu") as model:
        ranked = dict(model.rank(song, QUESTION, TERMS))
        before = model.pipeline.llm.n_decoded
        again = dict(model.rank(song, QUESTION, TERMS[:3]))
        assert model.pipeline.llm.n_decoded - before < 300, "the 300 audio rows are not read again"
        expected = oracle(model, song, TERMS)
    p = np.exp(expected - expected.max())
    p /= p.sum()
    for term, prob in zip(TERMS, p):
        assert abs(ranked[term] - prob) <= 1e-5 + 1e-3 * prob, term
    sub = p[:3] / p[:3].sum()
    assert all(abs(again[t] - q) <= 1e-5 + 1e-3 * q for t, q in zip(TERMS[:3], sub))


def test_bad_vocabularies_are_one_line_errors(tiny_q4, audio_dir):
    with open_model(tiny_q4, device="cpu") as model:
        with pytest.raises(MufunError, match="no terms"):
            model.rank(audio_dir / "song22k.flac", QUESTION, ["", "  "])
        ranked = model.rank(audio_dir / "song22k.flac", QUESTION, ["Jazz", "Jazz ", "Rock"])
    assert sorted(t for t, _ in ranked) == ["Jazz", "Rock"]   # the same term once


def test_tags_with_a_vocabulary_read_the_song_once(tiny_q4, audio_dir, tmp_path):
    """Model.tags with a vocabulary: each of its fields is the ranking Model.rank gives for that
    field's question, the rest a JSON answer under the schema's remaining fields; the song's
    audio rows are evaluated once for all of it."""
    import jsonschema

    from mufun_local.tags import TAGS_SCHEMA, builtin_vocabulary, field_question, free_schema
    song = audio_dir / "song22k.flac"
    vocab = {**builtin_vocabulary(), "vocals": ["none", "male", "female", "mixed", "choir"]}
    with open_model(tiny_q4, device="cpu") as model:
        rows, real = [], model.pipeline.llm.eval_embeddings

        def counting(emb, *a, **kw):
            rows.append(len(emb))
            return real(emb, *a, **kw)
        model.pipeline.llm.eval_embeddings = counting
        tags = model.tags(song, vocabulary=vocab, top=3)
        assert rows == [300], "the audio is read once for every field"
        for field, terms in vocab.items():
            ranked = model.rank(song, field_question(field), list(terms))[:3]
            assert tags[field] == ranked[0][0] and tags[f"{field}_top"] == [t for t, _ in ranked], field
            assert tags[f"{field}_top_scores"] == [round(p, 4) for _, p in ranked] and \
                tags[f"{field}_score"] == tags[f"{field}_top_scores"][0]
    free = [f for f in TAGS_SCHEMA["properties"] if f not in vocab]
    jsonschema.validate({f: tags[f] for f in free}, free_schema(free))


def test_rankings_of_vocabularies_of_other_sizes_keep_the_prefix(tiny_q4, audio_dir):
    song = audio_dir / "song22k.flac"
    with open_model(tiny_q4, device="cpu") as model:
        model.rank(song, QUESTION, TERMS[:2])
        before = model.pipeline.llm.n_decoded
        model.rank(song, QUESTION, TERMS)           # more terms: the same context, the audio kept
        assert model.pipeline.llm.n_decoded - before < 300


def test_rounds_fit_the_free_cells_and_the_spare_sequences():
    """A round takes consecutive continuations while their trie's fed nodes fit the context's
    free cells and its sequences; each continuation lands in exactly one round, in order."""
    from types import SimpleNamespace

    from mufun_local.llm.llama import LLM, trie_cells
    conts = [[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8], [7, 9, 9, 9], [10]]
    ctx = SimpleNamespace(n_ctx=10, n_past=6, n_seq=129)   # 4 free cells
    rounds = LLM._rounds(ctx, conts)
    assert rounds == [(0, 4), (4, 6)]   # {1, 1-2, 1-5, 7}: 4 cells, then {7, 7-9, 7-9-9} ([10] feeds none)
    assert all(trie_cells(conts[a:b]) <= 4 for a, b in rounds)
    assert LLM._rounds(SimpleNamespace(n_ctx=100, n_past=0, n_seq=3), conts) == [(0, 2), (2, 4), (4, 6)]
    assert LLM._rounds(ctx, []) == []
