"""beets plugin `mufun`: genre, mood, instruments, vocals, tempo feel and a description of
each track from MuFun, run locally by mufun-local, stored as flexible attributes.

    plugins: mufun
    mufun:
        model: null        # a converted model dir, checkpoint dir or hub id (default: mufun-local's)
        auto: no           # also tag during `beet import`
        threads: 0         # 0: all cores
        vocabulary: null   # a vocabulary file, or `builtin`: rank its terms for its fields
        fields: {}         # copy answers onto beets' own fields; off by default:
                           #   genre: genres     (fill-empty, any score)
                           #   genre: {field: genres, threshold: 0.5, policy: merge}

`beet mufun [QUERY]` asks each matching item the tag schema of `mufun-local batch --tags`
and stores `mufun_genre`, `mufun_subgenre`, `mufun_mood`, `mufun_instruments`,
`mufun_tempo_feel`, `mufun_vocals`, `mufun_language`, `mufun_description` (lists joined with
'; '), plus `mufun_model` and `mufun_settings`. With a vocabulary, each of its fields is the
most likely of its terms, with `mufun_<field>_score` (its probability) and `mufun_<field>_top`
(the runners-up). An item already tagged with the same model and settings is skipped (`-f`
asks again); one item's failure is logged and the run goes on; Ctrl-C keeps every item stored
so far; `--pretend` shows what would change and stores nothing.

`fields:` maps an answer onto one of beets' fields with a policy: `fill-empty` (the default:
never touches a value the owner set), `merge` (adds what the field lacks) or `overwrite`;
with `threshold:` (a vocabulary field's score, 0-1) nothing below it is written. mufun-local
never writes a file itself: mapped fields reach the files as beets writes them (its
`import.write` setting, or `beet write`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from beets import ui, util
from beets.plugins import BeetsPlugin

PREFIX = "mufun_"


@dataclass(frozen=True)
class Landing:
    """Where an answer field lands in the library: beets' `field`, under `policy`, when its
    score reaches `threshold` (None: any)."""

    field: str
    policy: str = "fill-empty"
    threshold: float | None = None


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
        self.config.add({"model": None, "auto": False, "threads": 0, "fields": {}, "force": False, "vocabulary": None})
        self._tagger = None
        if self.config["auto"].get(bool):
            self.import_stages = [self.imported]

    # -------------------------------------------------------------- the model, once
    @property
    def tagger(self):
        if self._tagger is None:
            from mufun_local.batch.tagger import Tagger
            self._tagger = Tagger(self.config["model"].get(), threads=self.config["threads"].get(int),
                                  vocabulary=self.vocabulary)
        return self._tagger

    @property
    def vocabulary(self) -> dict | None:
        from mufun_local.tags import load_vocabulary
        path = self.config["vocabulary"].get()
        return load_vocabulary(str(path)) if path else None

    def _field_map(self) -> dict[str, Landing]:
        """{answer field: Landing} from `fields:`; unknown answer fields, policies and thresholds
        that cannot apply are refused."""
        from mufun_local.tags import FIELDS, POLICIES
        vocab = self.vocabulary or {}
        mapping = {}
        for name, spec in (self.config["fields"].get(dict) or {}).items():
            name = str(name)
            if name not in FIELDS:
                raise ui.UserError(f"mufun: fields: {name} is not an answer field (choose from {', '.join(FIELDS)})")
            if not isinstance(spec, dict):
                spec = {"field": spec}
            unknown = sorted(set(spec) - {"field", "policy", "threshold"})
            if unknown or not isinstance(spec.get("field"), str) or not spec["field"]:
                raise ui.UserError(f"mufun: fields: {name}: give `field:` (beets' field) and optionally `policy:` "
                                   f"and `threshold:`")
            policy = str(spec.get("policy", "fill-empty"))
            if policy not in POLICIES:
                raise ui.UserError(f"mufun: fields: {name}: policy {policy} is not one of {', '.join(POLICIES)}")
            threshold = spec.get("threshold")
            if threshold is not None:
                if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
                    raise ui.UserError(f"mufun: fields: {name}: threshold is a probability between 0 and 1")
                if name not in vocab:
                    raise ui.UserError(f"mufun: fields: {name}: a threshold needs a score, which only a vocabulary "
                                       f"field has (vocabulary: covers {', '.join(vocab) or 'nothing'})")
            mapping[name] = Landing(spec["field"], policy, None if threshold is None else float(threshold))
        return mapping

    # -------------------------------------------------------------- one item
    def is_current(self, item) -> bool:
        t = self.tagger
        return item.get(PREFIX + "settings") == t.settings and item.get(PREFIX + "model") == t.model_id

    def tag_item(self, item, mapping: dict[str, Landing], write: bool, pretend: bool = False) -> bool:
        """Ask and store one item (with `pretend`, say what would change and store nothing);
        False (logged) when it cannot be tagged."""
        from mufun_local.errors import MufunError
        from mufun_local.tags import as_text, landed
        try:
            answer = self.tagger.tag(os.fsdecode(item.path))
        except MufunError as exc:
            self._log.warning("{}: {}", util.displayable_path(item.path), exc)
            return False
        changes = {}
        for name, land in mapping.items():
            score = answer.get(f"{name}_score")
            if name not in answer or (land.threshold is not None and (score is None or score < land.threshold)):
                continue  # nothing below the threshold is written
            new = landed(item.get(land.field), _as_field(item, land.field, answer[name]), land.policy)
            if new is not None:
                changes[land.field] = new
        if pretend:
            for field, new in changes.items():
                ui.print_(f"{util.displayable_path(item.path)}: {field}: {item.get(field)!r} -> {new!r}")
            return True
        for name, value in answer.items():
            item[PREFIX + name] = value if isinstance(value, float) else as_text(value)
        item[PREFIX + "model"] = self.tagger.model_id
        item[PREFIX + "settings"] = self.tagger.settings
        for field, new in changes.items():
            item[field] = new
        if changes:
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
        cmd.parser.add_option("-p", "--pretend", action="store_true", default=False,
                              help="show what `fields:` would change, store nothing")
        cmd.func = self._command
        return [cmd]

    def _command(self, lib, opts, args):
        from mufun_local.errors import MufunError
        from mufun_local.progress import bar
        force = opts.force or opts.pretend or self.config["force"].get(bool)
        items = list(lib.items(args))
        try:
            mapping = self._field_map()
            self.tagger  # the model opens before any item is asked
        except MufunError as exc:
            raise ui.UserError(f"mufun: {exc}") from None
        todo = items if force else [i for i in items if not self.is_current(i)]
        skipped, failed = len(items) - len(todo), 0
        progress = bar("mufun", len(todo), "item")
        try:
            for item in todo:
                failed += not self.tag_item(item, mapping, ui.should_write(), pretend=opts.pretend)
                progress.update()
        finally:
            progress.close()
            self._close()
        verb = "would tag" if opts.pretend else "tagged"
        ui.print_(f"mufun: {verb} {len(todo) - failed}, skipped {skipped} (already tagged), failed {failed}")

    def imported(self, session, task):
        from mufun_local.errors import MufunError
        try:
            mapping = self._field_map()
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
