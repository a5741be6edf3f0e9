"""session.Session's bookkeeping of what a context holds, against a stand-in for llama.cpp
that counts positions (the real context's equality with fresh runs is in test_prefix_cache)."""
from __future__ import annotations

import numpy as np
import pytest

from mufun_local.options import Options
from mufun_local.llm.prefix_cache import PrefixCache
from mufun_local.llm.session import Segment, Session, plan
from mufun_local.timing import Timer


class FakeLLM:
    """Positions only: what llm.LLM's context calls do to n_past."""

    def __init__(self):
        self.ctx, self.n_ctx, self.n_seq, self.n_past, self.settings = None, 0, 1, 0, {}
        self.opened, self.refuse_state = 0, False

    def open_context(self, n_ctx, n_batch, f32_kv, flash_attn, n_seq=1, unified=False):
        self.ctx, self.n_ctx, self.n_seq, self.n_past = object(), n_ctx, n_seq, 0
        self.settings = {"kv": "f32" if f32_kv else "f16", "flash_attn": flash_attn, "n_batch": min(n_batch, n_ctx),
                         "extra_bufts": EXTRA, **({"unified": True} if unified else {})}
        self.opened += 1

    def reset(self):
        self.n_past = 0

    def truncate(self, n):
        self.n_past = n

    def eval_tokens(self, ids, logits_at_end=True, on_batch=None):
        self.n_past += len(ids)

    def eval_embeddings(self, emb, logits_at_end=False, on_batch=None):
        self.n_past += len(emb)

    def save_state(self):
        return np.arange(self.n_past, dtype=np.uint8)

    def load_state(self, data, positions):
        self.n_past = 0
        if self.refuse_state:
            return False
        self.n_past = positions
        return True

    def close(self):
        self.ctx = None


class FakeModel:
    llm_sha256 = "0" * 64
    manifest = {"llm": {"quant": "q4_k_m"}, "dims": {"max_positions": 4096}}


EXTRA = None


@pytest.fixture
def ses(monkeypatch, tmp_path):
    global EXTRA
    from mufun_local.llm import llama as llm
    EXTRA = llm.use_extra_bufts("q4_k_m")
    fake = FakeLLM()
    s = Session(FakeModel(), Options(n_batch=64), lambda: fake, PrefixCache(tmp_path / "prefixes"))
    s.fake = fake
    return s


def _other_options(ses, options):
    other = Session(ses.model, options, lambda: ses.fake, ses.prefix_cache)
    other.fake, other.segments, other.settings = ses.fake, ses.segments, ses.settings
    assert other.llm is ses.fake  # the same context, loaded through the public property
    return other


def _plan(question: list[int]):
    """system text, one audio of 300 rows, the question."""
    return plan([[1, 2, 3], question], ["song-key"])


def _run(ses, p, start=0, save=False):
    emb = [np.zeros((300, 8), np.float32)]
    ses.prefill(p, emb, Timer({}), start=start, save=save)


def test_second_question_keeps_what_it_shares(ses):
    p1, p2 = _plan([7, 8]), _plan([9])
    assert ses.fit(3 + 300 + 2 + 16) and ses.fake.opened == 1
    _run(ses, p1)
    assert ses.n_past == 305 and [n for _, n in ses.segments] == [3, 300, 2]
    ses.fake.eval_tokens([5, 6])  # an answer: evaluated, not recorded
    head = p2[:-1]
    assert ses.shared(head) == 2 and ses.audio_positions(2) == 300
    assert ses.keep(2) == 303 and len(ses.segments) == 2  # the answer and the old question are gone
    _run(ses, p2, start=2)
    assert ses.n_past == 304 and not ses.fit(304)          # nothing reopened


def test_unrecorded_positions_in_between_trust_nothing_after(ses):
    ses.fit(512)
    _run(ses, _plan([7]))
    ses.fake.eval_tokens([1, 2])
    ses.record(Segment(ids=(2,)), 1)  # 2 positions evaluated, 1 recorded: the records are dropped
    assert ses.segments == []


def test_other_settings_share_nothing_and_reopen(ses):
    ses.fit(512)
    _run(ses, _plan([7]))
    head = _plan([8])[:-1]
    assert ses.shared(head) == 2
    ses = _other_options(ses, Options(n_batch=64, f32_kv=True))  # the same context, other options
    assert ses.shared(head) == 0
    assert ses.fit(512) and ses.fake.opened == 2 and ses.segments == []


def test_context_sized_up_and_capped(ses):
    ses.fit(300)
    assert ses.n_ctx == 512             # rounded up to 256s, never below n_batch
    ses.fit(5000)
    assert ses.n_ctx == 4096            # the model's length
    ses.fit(100, n_seq=3)
    assert ses.n_seq == 3 and ses.fake.opened == 3


def test_saved_prefix_restores_and_a_refused_one_is_forgotten(ses):
    ses.fit(512)
    p = _plan([7])
    _run(ses, p, save=True)             # the head (system + audio) goes to the prefix cache
    head = p[:-1]
    state = ses.stored(head)
    assert state is not None and state.positions == 303 and state.lengths == [3, 300]
    assert ses.known_audio_rows(head) == 300          # the context holds it
    ses.reset()
    assert ses.known_audio_rows(head) == 300          # the stored state's header says
    assert ses.restore(state, head)
    assert ses.n_past == 303 and ses.shared(head) == 2
    ses.fake.refuse_state = True
    assert not ses.restore(state, head)
    assert ses.stored(head) is None and ses.segments == [] and ses.known_audio_rows(head) is None


def test_a_prefix_with_several_audios_is_stored_with_each_segments_length(ses):
    two = plan([[1], [2, 2], [3]], ["a", "b"])
    head = two[:-1]
    assert ses.storable(head) and not ses.storable(plan([[1], [2]], [])[:-1])   # audio, or nothing to keep
    ses.fit(1024)
    ses.prefill(two, [np.zeros((300, 8), np.float32), np.zeros((600, 8), np.float32)], Timer({}), save=True)
    ses.reset()
    assert ses.known_audio_rows(head) == 900
    assert ses.hold(head, 1024, 1, Timer({})) == len(head)                   # restored, segment by segment
    assert [n for _, n in ses.segments] == [1, 300, 2, 600] and ses.n_past == 903


def test_hold_keeps_what_the_context_holds_and_reopens_when_it_must(ses):
    p = _plan([7])
    ses.fit(512)
    _run(ses, p)
    ses.fake.eval_tokens([5, 6])                                  # an answer
    assert ses.hold(p[:-1], 400, 1, Timer({})) == 2 and ses.n_past == 303 and ses.fake.opened == 1
    assert ses.hold(p[:-1], 2000, 1, Timer({})) == 0 and ses.fake.opened == 2   # larger: reopened, empty
    assert ses.n_past == 0 and ses.segments == []


def test_a_unified_context_is_its_own_setting(ses):
    """Scoring wants one KV pool for all sequences: another context, and another prefix key."""
    p = _plan([7])
    ses.fit(512)
    _run(ses, p, save=True)
    plain_key = ses._prefix_key(p[:-1])
    assert ses.hold(p[:-1], 400, 4, Timer({}), unified=True) == 0     # reopened; the plain state is not its own
    assert ses.fake.opened == 2 and ses.settings.get("unified") and ses._prefix_key(p[:-1]) != plain_key
    _run(ses, p)
    assert ses.hold(p[:-1], 400, 4, Timer({}), unified=True) == 2 and ses.fake.opened == 2   # kept as it is
    assert ses.hold(p[:-1], 400, 1, Timer({})) == 2 and ses.fake.opened == 3 and not ses.settings.get("unified")
