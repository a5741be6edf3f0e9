"""The context budget on its own (no llama.cpp): what fits, and the error when it does not."""
import pytest

from mufun_local.llm.budget import Budget
from mufun_local.errors import MufunError

B = Budget(limit=2048, tokens_per_window=300, n_ctx_train=40960)


def test_need_is_every_position_the_request_takes():
    assert B.need(text_tokens=100, windows=2, max_tokens=256) == 100 + 600 + 256
    assert B.need(text_tokens=10, windows=1, max_tokens=20, used=500) == 500 + 10 + 300 + 20


def test_room_and_windows_left():
    assert B.room(100, 256) == 2048 - 356
    assert B.windows_left(100, 256) == (2048 - 356) // 300 == 5
    assert B.windows_left(1000, 2000) == 0  # no room at all is zero windows, never negative


def test_exactly_full_fits_one_more_does_not():
    assert B.need(48, 6, 200) == 2048
    with pytest.raises(MufunError) as exc:
        B.need(49, 6, 200)
    msg = str(exc.value)
    assert "1800 audio tokens + 49 prompt tokens + 200 answer tokens > 2048" in msg
    assert "at most 150 s of audio fit" in msg and "up to 40960" in msg


def test_no_room_for_one_window_says_what_would_help():
    with pytest.raises(MufunError) as exc:
        B.need(1900, 1, 100)
    assert "no audio fits: 48 positions are left for it, one 30 s window takes 300" in str(exc.value)
    assert "--max-tokens" in str(exc.value) and "up to 40960" in str(exc.value) and "--segs" not in str(exc.value)
    full = Budget(40960, 300, 40960)  # at the model's length already: no larger --ctx to suggest
    with pytest.raises(MufunError) as exc:
        full.need(40000, 2, 900)
    assert "larger --ctx" not in str(exc.value) and "no audio fits: 60 positions" in str(exc.value)


def test_earlier_tokens_and_a_floor_are_said():
    with pytest.raises(MufunError, match=r"too long for the context: at least 3000 audio tokens .* \+ 100 earlier tokens"):
        B.need(10, 10, 20, used=100, at_least=True)
