"""beets plugin `mufun`: genre, mood, instruments, vocals, tempo feel and a description of
each track from MuFun, run locally by mufun-local, stored as flexible attributes.

    plugins: mufun
    mufun:
        model: null        # a converted model dir, checkpoint dir or hub id (default: mufun-local's)
        auto: no           # also tag during `beet import`
        threads: 0         # 0: all cores
        fields: {}         # copy answers onto beets' own fields, e.g. {genre: genres}; off by default

`beet mufun [QUERY]` asks each matching item the tag schema of `mufun-local batch --tags`
and stores `mufun_genre`, `mufun_subgenre`, `mufun_mood`, `mufun_instruments`,
`mufun_tempo_feel`, `mufun_vocals`, `mufun_language`, `mufun_description` (lists joined with
'; '), plus `mufun_model` and `mufun_settings`. An item already tagged with the same model
and settings is skipped (`-f` asks again); one item's failure is logged and the run goes
on; Ctrl-C keeps every item stored so far. mufun-local never writes a file itself: fields
mapped with `fields:` reach the files as beets writes them (its `import.write` setting, or
`beet write`).
"""
from __future__ import annotations

import os

from beets import ui, util
from beets.plugins import BeetsPlugin

PREFIX = "mufun_"


def _as_field(item, field: str, value):
    """An answer's value as beets stores `field`: a list for its list fields (`genres`), else text."""
    from beets.dbcore import types
    from mufun_local.tags import as_text
    if isinstance(item._type(field), types.DelimitedString):
        return [str(v).strip() for v in value] if isinstance(value, list) else [str(value).strip()]
    return as_text(value)


class MufunPlugin(BeetsPlugin):
    def __init__(self):
        super().__init__()
        self.config.add({"model": None, "auto": False, "threads": 0, "fields": {}, "force": False})
        self._tagger = None
        if self.config["auto"].get(bool):
            self.import_stages = [self.imported]

    # -------------------------------------------------------------- the model, once
    @property
    def tagger(self):
        if self._tagger is None:
            from mufun_local.batch.tagger import Tagger
            self._tagger = Tagger(self.config["model"].get(), threads=self.config["threads"].get(int))
        return self._tagger

    def _field_map(self) -> dict[str, str]:
        """{answer field: beets field} from `fields:`; unknown answer fields are refused."""
        from mufun_local.tags import FIELDS
        mapping = {str(k): str(v) for k, v in (self.config["fields"].get(dict) or {}).items()}
        unknown = sorted(set(mapping) - set(FIELDS))
        if unknown:
            raise ui.UserError(f"mufun: fields: {', '.join(unknown)} is not an answer field "
                               f"(choose from {', '.join(FIELDS)})")
        return mapping

    # -------------------------------------------------------------- one item
    def is_current(self, item) -> bool:
        t = self.tagger
        return item.get(PREFIX + "settings") == t.settings and item.get(PREFIX + "model") == t.model_id

    def tag_item(self, item, mapping: dict[str, str], write: bool) -> bool:
        """Ask and store one item; False (logged) when it cannot be tagged."""
        from mufun_local.errors import MufunError
        from mufun_local.tags import as_text
        try:
            answer = self.tagger.tag(os.fsdecode(item.path))
        except MufunError as exc:
            self._log.warning("{}: {}", util.displayable_path(item.path), exc)
            return False
        for name, value in answer.items():
            item[PREFIX + name] = as_text(value)
        item[PREFIX + "model"] = self.tagger.model_id
        item[PREFIX + "settings"] = self.tagger.settings
        for name, field in mapping.items():
            if name in answer:
                item[field] = _as_field(item, field, answer[name])
        if mapping:
            item.try_sync(write=write, move=False)
        else:
            item.store()
        self._log.info("{}: {}", util.displayable_path(item.path), as_text(answer.get("genre", "")))
        return True

    # -------------------------------------------------------------- entry points
    def commands(self):
        cmd = ui.Subcommand("mufun", help="tag items with MuFun: genre, mood, instruments, vocals, tempo feel")
        cmd.parser.add_option("-f", "--force", action="store_true", default=False,
                              help="ask again items already tagged with this model and settings")
        cmd.func = self._command
        return [cmd]

    def _command(self, lib, opts, args):
        from mufun_local.errors import MufunError
        from mufun_local.progress import bar
        mapping = self._field_map()
        force = opts.force or self.config["force"].get(bool)
        items = list(lib.items(args))
        try:
            self.tagger  # the model opens before any item is asked
        except MufunError as exc:
            raise ui.UserError(f"mufun: {exc}") from None
        todo = items if force else [i for i in items if not self.is_current(i)]
        skipped, failed = len(items) - len(todo), 0
        progress = bar("mufun", len(todo), "item")
        try:
            for item in todo:
                failed += not self.tag_item(item, mapping, ui.should_write())
                progress.update()
        finally:
            progress.close()
            self._close()
        ui.print_(f"mufun: tagged {len(todo) - failed}, skipped {skipped} (already tagged), failed {failed}")

    def imported(self, session, task):
        from mufun_local.errors import MufunError
        mapping = self._field_map()
        try:
            self.tagger
        except MufunError as exc:
            raise ui.UserError(f"mufun: {exc}") from None
        for item in task.imported_items():
            if not self.is_current(item):
                self.tag_item(item, mapping, write=False)  # the import writes files itself, as configured

    def _close(self):
        if self._tagger is not None:
            self._tagger.close()
            self._tagger = None
