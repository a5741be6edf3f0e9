"""options.py: requests and load options complete when built, each value checked once by
the rule the CLI's flags and the server share."""
from __future__ import annotations

import dataclasses
import math

import pytest

from mufun_local.errors import MufunError
from mufun_local.options import RANGES, InvalidValue, Options, Request, checked, request, sampling


class _Model:
    """What options.sampling reads of a ModelDir: its generation config."""

    def __init__(self, temperature=0.7, top_p=0.9, top_k=20):
        self.d = {"temperature": temperature, "top_p": top_p, "top_k": top_k}

    def sampling_defaults(self):
        return dict(self.d)


def test_one_merge_of_sampling_defaults(tiny_q4):
    """What a request gives, the model's generation config (from its manifest) for the rest."""
    from mufun_local.format.model_dir import ModelDir
    md = ModelDir.open(tiny_q4)
    d = md.sampling_defaults()
    s = sampling(md, seed=5)
    assert (s.temperature, s.top_p, s.top_k, s.seed) == (d["temperature"], d["top_p"], d["top_k"], 5)
    s = sampling(md, 0.0, 0.5, 3, repeat_penalty=1.2)
    assert (s.temperature, s.top_p, s.top_k, s.repeat_penalty) == (0.0, 0.5, 3, 1.2) and 0 <= s.seed < 2**31


@pytest.mark.parametrize("name,value", [
    ("temperature", -0.1), ("temperature", 2.5), ("temperature", math.nan), ("temperature", "hot"),
    ("top_p", 1.5), ("top_k", -1), ("repeat_penalty", math.inf), ("max_tokens", 0), ("max_tokens", "1e999"),
])
def test_out_of_range_values_name_themselves(name, value):
    with pytest.raises(InvalidValue) as err:
        checked(name, value, int if name in ("top_k", "max_tokens") else float)
    assert err.value.param == name and name in str(err.value)


def test_ranges_are_inclusive_and_a_context_bounds_the_answer():
    for name, (lo, hi) in RANGES.items():
        assert checked(name, lo) == lo
        if hi is not None:
            assert checked(name, hi) == hi
    assert checked("max_tokens", "12", int) == 12
    with pytest.raises(InvalidValue, match="between 1 and 64"):
        checked("max_tokens", 65, int, hi=64)


def test_request_is_complete_when_built_and_frozen():
    progress = []
    req = request(_Model(), 16, temperature=0, seed=3, grammar="root ::= \"x\"",
                  progress=lambda *a: progress.append(a))
    assert (req.max_tokens, req.sampling.temperature, req.sampling.seed, req.sampling.grammar) == \
        (16, 0.0, 3, 'root ::= "x"')
    assert (req.sampling.top_p, req.sampling.top_k) == (0.9, 20)   # the model's, not given
    req.show("answer", 1, 16)
    assert progress == [("answer", 1, 16)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.max_tokens = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.sampling.grammar = None
    with pytest.raises(InvalidValue):
        Request(0)


def test_options_are_checked_and_frozen():
    opt = Options(n_ctx=1024)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opt.n_ctx = 2048
    assert dataclasses.replace(opt, n_ctx=2048).n_ctx == 2048
    for bad in ({"n_ctx": 10}, {"threads": -1}, {"parallel": 0}, {"n_batch": 0}, {"encoder_batch": 0}):
        with pytest.raises(MufunError):
            Options(**bad)


def test_model_refuses_unknown_load_options_and_caches_before_any_work(tmp_path):
    from mufun_local.model import Model
    with pytest.raises(MufunError, match="unknown load option.*thread"):
        Model(tmp_path / "nothing", thread=4)
    with pytest.raises(MufunError, match="caches='memory'"):
        Model(tmp_path / "nothing", caches="memory")
    with pytest.raises(MufunError, match="threads must be"):
        Model(tmp_path / "nothing", threads=-1)
