"""Helpers the test modules share: the CLI run in-process, its one-line-error check, and a
Pipeline built from one mixed set of keyword arguments (split into its load Options and
the Request every ask of the test makes)."""
from __future__ import annotations

from dataclasses import fields

from mufun_local.format.model_dir import ModelDir
from mufun_local.cli import main
from mufun_local.pipeline import Answer, Options, Pipeline, Request, Result

REQUEST_FIELDS = {f.name for f in fields(Request)}


def run_cli(capsys, *args):
    """`mufun-local ARGS` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, match):
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]


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


class FakePipeline:
    """Stands where a Pipeline does (server.create_app(pipeline=...), a patched cli): no
    encoder, no llama.cpp, answers in milliseconds. It answers "a b c ..." one word per token
    up to the request's max_tokens (stopping early at `stop_after`), reports the stages to
    the request's progress callback as the real one does, and keeps each call for the test."""

    def __init__(self, model, words: int = 8, stop_after: int | None = None):
        self.model, self.stop_ids = model, {0}
        self.words, self.stop_after = words, stop_after
        self.calls: list[tuple] = []

    def complete(self, prm, audios, request=None) -> Answer:
        req = request or Request()
        self.calls.append((prm, audios, req))
        res = Result(prompt_tokens=10, audio_tokens=300 * len(audios))

        def pieces():
            req.show("encoder", 0, len(audios))
            req.show("prefill", res.prompt_tokens + res.audio_tokens, res.prompt_tokens + res.audio_tokens)
            res.stopped = "length"
            for i in range(min(req.max_tokens, self.words)):
                if self.stop_after is not None and i == self.stop_after:
                    res.tokens.append(0)
                    res.stopped = "stop"
                    return
                res.tokens.append(i + 1)
                piece = ("" if i == 0 else " ") + chr(ord("a") + i % 26)
                res.text += piece
                yield piece
        return Answer(pieces(), res)

    def ask(self, audios, question, request=None) -> Answer:
        return self.complete(question, audios, request)

    def close(self) -> None:
        pass
