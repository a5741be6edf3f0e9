"""Tags for one file at a time, with the tag schema `batch --tags` uses: what a music
library's plugin (beetsplug/mufun.py) calls. The model loads once; each file is decoded,
encoded and answered greedily under the schema's grammar; `settings` is the same hash
`batch` journals, so a library can tell which items were tagged with this model and these
settings."""
from __future__ import annotations

from .errors import MufunError
from .export import TAGS_SCHEMA

# What one answer holds, in the schema's order
FIELDS = tuple(TAGS_SCHEMA["properties"])


class Tagger:
    def __init__(self, model: str | None = None, threads: int = 0, max_tokens: int = 512, quiet: bool = True):
        from . import constrain, export
        from .batch import settings_key
        from .embcache import EmbeddingCache
        from .llm import Sampling
        from .model_cache import home, resolve
        from .pipeline import Options, Pipeline, Request

        self.model = resolve(model, quiet=quiet)
        opt = Options(threads=threads, keep_audio_models=True)
        self.request = Request(max_tokens, Sampling(temperature=0.0, grammar=constrain.schema_grammar(export.TAGS_SCHEMA)),
                               schema=export.TAGS_SCHEMA)
        self.pipe = Pipeline(self.model, opt, cache=EmbeddingCache(home() / "embeddings"))
        self.model_id = str(self.model.manifest["source"]["id"])
        self.settings = settings_key(self.model, opt, self.request)
        self._question = export.TAGS_QUESTION

    def tag(self, path: str) -> dict:
        """The schema's fields for the file at `path`; a MufunError (one line) if it cannot
        be read or the answer is cut off or breaks the schema."""
        from .batch import answer_file, prepare
        prepared = prepare(path, self.pipe.audio.mel_filters)
        rec = next(answer_file(self.pipe, self.request, path, [self._question], prepared, self.model_id,
                               settings=self.settings))
        if rec["error"]:
            raise MufunError(rec["error"])
        return rec["parsed"]

    def close(self) -> None:
        self.pipe.close()


def as_text(value) -> str:
    """A field's value as a beets-style string, trimmed (lists joined with '; ', as `batch --format csv`)."""
    return "; ".join(str(v).strip() for v in value) if isinstance(value, list) else str(value).strip()
