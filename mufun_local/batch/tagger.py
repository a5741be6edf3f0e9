"""Tags for one file at a time, with the tag schema `batch --tags` uses: what a music
library's plugin (beetsplug/mufun.py) calls. The model loads once; each file is decoded,
encoded and answered greedily under the schema's grammar (Model.tags_request); `settings`
is the same hash `batch` journals, so a library can tell which items were tagged with this
model and these settings."""
from __future__ import annotations

from ..errors import MufunError
from ..tags import TAGS_QUESTION


class Tagger:
    def __init__(self, model: str | None = None, threads: int = 0, max_tokens: int = 512, quiet: bool = True,
                 vocabulary: dict | None = None):
        from ..model import Caches, Model
        from .local import Reading, settings_key

        # a library is tagged once per song: its embeddings are kept on disk, no prefix states
        self.model = Model(model, caches=Caches.on_disk(prefixes=False), threads=threads, keep_audio_models=True,
                           quiet=quiet)
        self.request = self.model.tags_request(max_tokens)
        self.model_id = self.model.id
        self.reading = Reading(vocabulary)
        self.settings = settings_key(self.model, self.request, self.reading)

    def tag(self, path: str) -> dict:
        """The schema's fields for the file at `path`; a MufunError (one line) if it cannot
        be read or the answer is cut off or breaks the schema."""
        from .local import answer_file, prepare
        prepared = prepare(path, self.model.mel_filters)
        rec = next(answer_file(self.model, self.request, path, [TAGS_QUESTION], prepared, settings=self.settings,
                               reading=self.reading))
        if rec["error"]:
            raise MufunError(rec["error"])
        return rec["parsed"]

    def close(self) -> None:
        self.model.close()
