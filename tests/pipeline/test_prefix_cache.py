"""Reusing the audio prefix: in one process (the context keeps it) and across processes (its
KV state on disk). Answers with and without reuse must be identical, token for token."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from mufun_local.format.model_dir import ModelDir
from mufun_local.llm.llama import Sampling
from mufun_local.llm.prefix_cache import PrefixCache, PrefixState
from mufun_local.options import Request
from helpers import open_model

GREEDY = Sampling(temperature=0.0)
SEEDED = Sampling(temperature=0.9, top_k=40, top_p=0.95, seed=7)


def _pipe(model_dir, prefix=None, cache=None, sampling=GREEDY, **opts):
    """A Model with these caches, and the request its questions are asked with (.req)."""
    opts.setdefault("compute_type", "float32")
    model = open_model(model_dir, cache, prefix, device="cpu", **opts)
    model.req = Request(10, sampling, keep_logits=True)
    return model


def _ask(model, song, question, segs=None):
    res = model.ask(song, question, segs=segs, request=model.req).result()
    return res.text, res


def _fresh(model_dir, song, question, **opts):
    with _pipe(model_dir, **opts) as model:
        return _ask(model, song, question)[1]


def _same(a, b):
    assert a.tokens == b.tokens
    np.testing.assert_array_equal(a.first_logits, b.first_logits)


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_second_question_in_process_evaluates_only_its_tokens(tiny_f32, audio_dir, sampling):
    song = audio_dir / "long48k.flac"
    pipe = _pipe(tiny_f32, sampling=sampling)
    _ask(pipe, song, "What genre is this?")
    before = pipe.pipeline.llm.n_decoded
    _, second = _ask(pipe, song, "Which instruments play?")
    question_rows = pipe.pipeline.llm.n_decoded - before - max(0, len(second.tokens) - 1)
    assert "encoder" not in second.timings
    assert question_rows < 20, "only the question's own tokens may be evaluated again"
    assert second.audio_tokens == 600
    _same(second, _fresh(tiny_f32, song, "Which instruments play?", sampling=sampling))
    pipe.close()


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_prefix_from_disk_gives_the_fresh_answer(tmp_path, tiny_f32, audio_dir, sampling, encoder_calls):
    song = audio_dir / "long48k.flac"
    store = PrefixCache(tmp_path / "prefixes")
    first = _pipe(tiny_f32, store, sampling=sampling)
    _ask(first, song, "What genre is this?")
    first.close()
    assert len(list((tmp_path / "prefixes").glob("*.kv"))) == 1
    calls = len(encoder_calls)

    second = _pipe(tiny_f32, store, sampling=sampling)   # a new LLM, as in a new process
    _, res = _ask(second, song, "Which instruments play?")
    second.close()
    assert len(encoder_calls) == calls, "a stored prefix needs no encoder"
    assert "prefix_load" in res.timings and "encoder" not in res.timings
    assert res.audio_tokens == 600
    _same(res, _fresh(tiny_f32, song, "Which instruments play?", sampling=sampling))


def test_a_prefix_with_two_audios_from_disk_gives_the_fresh_answer(tmp_path, tiny_f32, audio_dir, encoder_calls):
    """The stored state keeps each segment's length: a prompt with several audios is kept like one."""
    songs = [audio_dir / "song22k.flac", audio_dir / "long48k.flac"]
    store = PrefixCache(tmp_path / "prefixes")
    with _pipe(tiny_f32, store) as first:
        _ask(first, songs, "<audio> is song 1. <audio> is song 2. Which is faster?")
    assert len(list((tmp_path / "prefixes").glob("*.kv"))) == 1
    calls = len(encoder_calls)
    with _pipe(tiny_f32, store) as second:
        _, res = _ask(second, songs, "<audio> is song 1. <audio> is song 2. Which is louder?")
    assert len(encoder_calls) == calls and "prefix_load" in res.timings and res.audio_tokens == 900
    _same(res, _fresh(tiny_f32, songs, "<audio> is song 1. <audio> is song 2. Which is louder?"))


def test_quantized_model_too(tmp_path, tiny_q4, audio_dir):
    song = audio_dir / "song44k.wav"
    store = PrefixCache(tmp_path / "p")
    p = _pipe(tiny_q4, store)
    _ask(p, song, "Genre?")
    p.close()
    p = _pipe(tiny_q4, store)
    _, res = _ask(p, song, "Mood?")
    p.close()
    assert "prefix_load" in res.timings
    _same(res, _fresh(tiny_q4, song, "Mood?"))


def test_keys_cover_model_segs_encoder_and_settings(tmp_path, tiny_f32, tiny_f16, audio_dir):
    song = audio_dir / "long48k.flac"
    store = PrefixCache(tmp_path / "p")

    def ask(model, segs=None, **opts):
        p = _pipe(model, store, **opts)
        res = _ask(p, song, "Genre?", segs)[1]
        p.close()
        return res

    ask(tiny_f32)
    variants = [dict(model=tiny_f16), dict(model=tiny_f32, segs=(1.0, 9.0)),
                dict(model=tiny_f32, compute_type="int8"), dict(model=tiny_f32, f32_kv=True)]
    for v in variants:
        assert "prefix_load" not in ask(**v).timings, v
    assert len(list((tmp_path / "p").glob("*.kv"))) == 1 + len(variants)
    assert "prefix_load" in ask(tiny_f32).timings


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_state_is_ignored_and_replaced(tmp_path, tiny_f32, audio_dir, damage):
    song = audio_dir / "song22k.flac"
    store = PrefixCache(tmp_path / "p")
    p = _pipe(tiny_f32, store)
    _ask(p, song, "Genre?")
    p.close()
    (f,) = (tmp_path / "p").glob("*.kv")
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 1000]
    elif damage == "flip":
        data[-5000] ^= 0x40            # one bit of one KV value
    elif damage == "garbage":
        data = bytearray(b"\x07" * len(data))
    else:
        data = bytearray()
    f.write_bytes(bytes(data))
    p = _pipe(tiny_f32, store)
    _, res = _ask(p, song, "Mood?")
    p.close()
    assert "prefix_load" not in res.timings and "encoder" in res.timings
    _same(res, _fresh(tiny_f32, song, "Mood?"))
    assert PrefixCache(tmp_path / "p").get(f.stem) is not None, "the damaged entry is written again"


def test_no_cache_means_no_prefix_files(tmp_path, tiny_f32, audio_dir):
    p = _pipe(tiny_f32, None)
    _ask(p, audio_dir / "song22k.flac", "Genre?")
    p.close()
    assert not (tmp_path / "p").exists()


def test_store_is_bounded_lru(tmp_path):
    store = PrefixCache(tmp_path, limit_bytes=3 * 1400)   # ~1,250 bytes a file
    for i, key in enumerate("abcd"):
        store.put(PrefixState(key * 64, 10, [5, 5], np.full(1000, i, np.uint8)))
        if key == "b":
            assert store.get("a" * 64) is not None   # a is now more recent than b
    kept = sorted(f.stem[0] for f in tmp_path.glob("*.kv"))
    assert kept == ["a", "c", "d"]


def test_store_rejects_lies_and_other_keys(tmp_path):
    store = PrefixCache(tmp_path)
    store.put(PrefixState("k" * 64, 10, [5, 5], np.arange(100, dtype=np.uint8)))
    (tmp_path / ("k" * 64 + ".kv")).rename(tmp_path / ("j" * 64 + ".kv"))
    assert store.get("j" * 64) is None, "a file under another key's name is not that key's state"
    assert not list(tmp_path.glob("*.kv"))


def test_concurrent_writers_and_readers_see_whole_states(tmp_path):
    store = PrefixCache(tmp_path)
    key = "c" * 64
    states = [np.full(2_000_000, i, np.uint8) for i in range(4)]
    seen, errors = [], []

    def write(i):
        for _ in range(5):
            store.put(PrefixState(key, 10, [5, 5], states[i]))

    def read():
        for _ in range(40):
            s = PrefixCache(tmp_path).get(key)
            if s is not None:
                seen.append(int(s.data[0]))
                if not (s.data == s.data[0]).all():
                    errors.append("mixed")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)] + \
              [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not list(tmp_path.glob("*.partial"))
    assert store.get(key) is not None


def test_batch_evaluates_each_files_prefix_once(tmp_path, tiny_q4, audio_dir):
    from mufun_local.batch.local import run_batch

    pipe = _pipe(tiny_q4, compute_type=None, keep_audio_models=True)
    rows = []
    real = pipe.pipeline.llm.eval_embeddings

    def counting(emb, *a, **kw):
        rows.append(len(emb))
        return real(emb, *a, **kw)
    pipe.pipeline.llm.eval_embeddings = counting
    files = [str(audio_dir / "song22k.flac"), str(audio_dir / "long48k.flac")]
    questions = ["Genre?", "Mood?", "Instruments?", "Tempo?", "Vocals?"]
    summary = run_batch(pipe, pipe.req, files, questions, tmp_path / "out.jsonl")
    assert summary.done == 10
    assert rows == [300, 600], "each file's audio is prefilled once for all its questions"
    pipe.close()


def test_serve_follow_up_keeps_the_audio(tmp_path, tiny_q4, audio_dir):
    """A follow-up re-sends the whole conversation; the context keeps the audio prefix."""
    import base64

    from mufun_local.server.http import build_prompt

    md = ModelDir.open(tiny_q4)
    pipe = _pipe(tiny_q4, compute_type=None, keep_audio_models=True, n_ctx=2048)
    audio = {"type": "input_audio", "input_audio": {
        "data": base64.b64encode((audio_dir / "song22k.flac").read_bytes()).decode(), "format": "flac"}}
    turn1 = [{"role": "user", "content": [audio, {"type": "text", "text": "Genre?"}]}]
    prm, audios = build_prompt(turn1, md.manifest)  # the upload decoded from memory
    answer = pipe.complete(prm, audios, request=pipe.req).text()
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the mood?"}]
    prm, audios = build_prompt(turn2, md.manifest)
    before = pipe.pipeline.llm.n_decoded
    follow_up = pipe.complete(prm, audios, request=pipe.req).result()
    assert pipe.pipeline.llm.n_decoded - before < 300, "the 300 audio rows are not evaluated again"
    pipe.close()
    with _pipe(tiny_q4, compute_type=None, n_ctx=2048) as fresh:  # the whole conversation, from nothing
        _same(follow_up, fresh.complete(prm, audios, request=fresh.req).result())



def test_a_given_context_smaller_than_the_batch_still_reuses(tiny_q4, audio_dir):
    """--ctx below n_batch clips the batch; the context must still be kept between questions."""
    song = audio_dir / "song22k.flac"
    pipe = _pipe(tiny_q4, compute_type=None, n_ctx=448, n_batch=512)
    _ask(pipe, song, "Genre?")
    before = pipe.pipeline.llm.n_decoded
    _, res = _ask(pipe, song, "Mood?")
    assert pipe.pipeline.llm.n_decoded - before < 300 and res.audio_tokens == 300
    pipe.close()
