"""The audio-embedding cache and multi-turn chat."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import numpy as np
import pytest

from mufun_local.encoder.embcache import EmbeddingCache
from mufun_local.llm.llama import Sampling
from mufun_local.options import Request
from helpers import open_model

GREEDY = Request(8, Sampling(temperature=0.0))


def _pipe(model_dir, cache=None, **opts):
    return open_model(model_dir, cache, device="cpu", **opts)


def _ask(model, path, question="What genre?", segs=None):
    res = model.ask(path, question, segs=segs, request=GREEDY).result()
    return res.text, res


def test_cache_hit_skips_the_encoder(tmp_path, tiny_q4, audio_dir, encoder_calls):
    cache = EmbeddingCache(tmp_path / "cache")
    pipe = _pipe(tiny_q4, cache)
    song = audio_dir / "long48k.flac"
    first_text, first = _ask(pipe, song)
    assert encoder_calls == [2]
    files = list((tmp_path / "cache").glob("*/*.npy"))
    assert len(files) == 1
    second_text, second = _ask(pipe, song)
    assert encoder_calls == [2], "the second ask must not run the encoder"
    assert "encoder" not in second.timings and "decode" not in second.timings
    assert second_text == first_text and second.tokens == first.tokens
    fresh = _pipe(tiny_q4).embed(song)
    np.testing.assert_array_equal(np.load(files[0]), fresh.embeddings)
    pipe.close()


def test_cache_keys_on_content_segs_model_and_compute_type(tmp_path, tiny_q4, tiny_f32, audio_dir, encoder_calls):
    cache = EmbeddingCache(tmp_path / "cache")
    song = audio_dir / "song22k.flac"
    _ask(_pipe(tiny_q4, cache), song)
    _ask(_pipe(tiny_q4, cache), song, segs=(0.0, 2.0))                 # other segs
    _ask(_pipe(tiny_f32, cache), song)                                  # other encoder weights
    _ask(_pipe(tiny_q4, cache, compute_type="int8"), song)             # other compute type
    copy = tmp_path / "renamed.flac"
    copy.write_bytes(song.read_bytes())
    _ask(_pipe(tiny_q4, cache), copy)                                   # same content, other name: hit
    assert len(encoder_calls) == 4
    assert len(list((tmp_path / "cache").glob("*/*.npy"))) == 4


@pytest.mark.parametrize("bad", ["empty", "shape", "dtype", "nan"])
def test_a_bad_cache_entry_is_computed_again(tmp_path, tiny_q4, audio_dir, encoder_calls, bad):
    cache = EmbeddingCache(tmp_path / "cache")
    song = audio_dir / "song22k.flac"
    first_text, _ = _ask(_pipe(tiny_q4, cache), song)
    (f,) = (tmp_path / "cache").glob("*/*.npy")
    good = np.load(f)
    if bad == "empty":
        f.write_bytes(b"")
    else:
        arr = {"shape": good[:, :7], "dtype": good.astype(np.float64), "nan": np.where(good > 0, np.nan, good)}[bad]
        np.save(f, arr)
    text, res = _ask(_pipe(tiny_q4, cache), song)
    assert text == first_text and "encoder" in res.timings and len(encoder_calls) == 2
    np.testing.assert_array_equal(np.load(f), good)


def test_cache_is_bounded_lru(tmp_path):
    cache = EmbeddingCache(tmp_path, limit_bytes=3 * 4096 + 3 * 128)
    arrays = {k: np.full((16, 64), i, np.float32) for i, k in enumerate("abcd")}
    for k in "abc":
        cache.put(k * 64, arrays[k])
        time.sleep(0.01)
    assert cache.get("a" * 64) is not None      # touch a: b is now the oldest
    time.sleep(0.01)
    cache.put("d" * 64, arrays["d"])
    assert cache.get("b" * 64) is None
    for k in "acd":
        np.testing.assert_array_equal(cache.get(k * 64), arrays[k])


def test_chat_turn1_equals_ask_and_turn2_reuses_the_cache(tiny_q4, audio_dir):
    song = audio_dir / "song22k.flac"
    ask_text, ask_res = _ask(_pipe(tiny_q4), song, "What genre is this?")

    model = _pipe(tiny_q4)
    chat = model.chat(2048, request=GREEDY)
    chat.add_audio(song)
    answer = chat.send("What genre is this?")
    turn1 = "".join(answer)
    assert turn1 == ask_text and answer.result().tokens == ask_res.tokens

    llm = model.pipeline.llm
    before_decoded, before_past = llm.n_decoded, llm.n_past
    answer = chat.send("And the mood?")
    "".join(answer)
    r2 = answer.result()
    fed_back = len(r2.tokens) - (1 if r2.stopped == "stop" else 0)
    assert llm.n_decoded - before_decoded == r2.prompt_tokens + fed_back, "only the new turn is evaluated"
    assert llm.n_past == before_past + r2.prompt_tokens + fed_back
    turn2_text = llm.tokenize("<|endoftext|>USER: And the mood? ASSISTANT:")
    assert r2.prompt_tokens == len(turn2_text)
    model.close()


def test_chat_audio_in_a_later_turn(tiny_q4, audio_dir):
    model = _pipe(tiny_q4)
    chat = model.chat(2048, request=GREEDY)
    chat.add_audio(audio_dir / "song22k.flac")
    "".join(chat.send("What genre?"))
    chat.add_audio(audio_dir / "song44k.wav")
    assert chat.send("How does this one compare?").usage()["audio_tokens"] == 300
    saved = chat.to_json()
    assert "How does this one compare?" in saved and "song44k.wav" in saved
    chat.reset()
    assert model.pipeline.llm.n_past == 0
    model.close()


def _read_until(fd, needle: bytes, timeout: float = 60.0) -> bytes:
    buf, end = b"", time.time() + timeout
    while needle not in buf and time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_chat_in_a_terminal_answers_like_ask(tiny_q4, audio_dir, tmp_path):
    song = audio_dir / "song22k.flac"
    expected, _ = _ask(_pipe(tiny_q4), song, "What genre is this?")
    master, slave = pty.openpty()
    env = dict(os.environ, MUFUN_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, "-m", "mufun_local", "chat", "-m", str(tiny_q4), str(song),
                             "--temperature", "0", "--max-tokens", "8"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    try:
        assert b"> " in _read_until(master, b"> ")
        os.write(master, b"What genre is this?\r")
        out = _read_until(master, b"\n> ")
        assert expected.encode("utf-8", "replace") in out.replace(b"\r\n", b"\n")
        os.write(master, b"/quit\r")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_chat_from_a_pipe(tiny_q4, audio_dir, tmp_path):
    env = dict(os.environ, MUFUN_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "mufun_local", "chat", "-m", str(tiny_q4),
                           str(audio_dir / "song22k.flac"), "--max-tokens", "4", "--seed", "1"],
                          input="What genre?\nAnd the tempo?\n", capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2
