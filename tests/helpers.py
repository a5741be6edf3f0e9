"""Helpers the test modules share: the CLI run in-process, its one-line-error check, a Model
of a test model with the caches a test gives, and a fake Model for the doors' plumbing."""
from __future__ import annotations

from mufun_local.cli import main
from mufun_local.encoder.embedder import audio_inputs
from mufun_local.format.model_dir import ModelDir
from mufun_local.model import Caches, Model
from mufun_local.options import Options, Request, request
from mufun_local.pipeline import Answer, Result


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


def open_model(model_dir, embeddings=None, prefixes=None, **options) -> Model:
    """A Model of a converted test model with these caches (none unless given) and load options."""
    return Model(ModelDir.open(model_dir), caches=Caches(embeddings, prefixes), **options)


class FakeModel:
    """Stands where a mufun_local.Model does (server.create_app, a patched CLI): no encoder, no
    llama.cpp, answers in milliseconds. It answers "a b c ..." one word per token up to the
    request's max_tokens (stopping early at `stop_after`), reports the stages to the request's
    progress callback as the real one does, and keeps each call (prompt, audios, request)."""

    def __init__(self, model: ModelDir, words: int = 8, stop_after: int | None = None, **options):
        self.dir, self.path, self.id = model, model.path, str(model.manifest["source"]["id"])
        self.options, self.stop_ids = Options(**options), {0}
        self.words, self.stop_after = words, stop_after
        self.calls: list[tuple] = []

    def request(self, **call) -> Request:
        return request(self.dir, **call)

    def complete(self, prm, audio, request: Request | None = None, **call) -> Answer:
        req = request or self.request(**call)
        audios = audio_inputs(audio) if audio else []
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
        return Answer(pieces(), res, req)

    def ask(self, audio, question, segs=None, request: Request | None = None, **call) -> Answer:
        return self.complete(question, audio_inputs(audio, segs), request, **call)

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
