"""Test helper: a Pipeline built from one mixed set of keyword arguments, split into its
load Options and the Request every ask of the test makes."""
from __future__ import annotations

from dataclasses import fields

from mufun_local.artifacts import ModelDir
from mufun_local.pipeline import Options, Pipeline, Request

REQUEST_FIELDS = {f.name for f in fields(Request)}


class Bound:
    """A pipeline and the request this test asks with; everything else is the pipeline's."""

    def __init__(self, pipe: Pipeline, req: Request):
        self.pipe, self.req = pipe, req

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def ask(self, audios, question):
        return self.pipe.ask(audios, question, self.req)

    def complete(self, prm, audios):
        return self.pipe.complete(prm, audios, self.req)

    def ask_many(self, audios, questions, parallel=None):
        return self.pipe.ask_many(audios, questions, self.req, parallel=parallel)


def bound_pipe(model_dir, cache=None, prefix_cache=None, **kw) -> Bound:
    req = Request(**{k: v for k, v in kw.items() if k in REQUEST_FIELDS})
    opt = Options(**{k: v for k, v in kw.items() if k not in REQUEST_FIELDS})
    return Bound(Pipeline(ModelDir.open(model_dir), opt, cache=cache, prefix_cache=prefix_cache), req)
