"""Vocabulary files (tags.load_vocabulary): the formats an owner writes, and everything else
refused in one line."""
from __future__ import annotations

import json

import pytest

from mufun_local.errors import MufunError
from mufun_local.tags import BUILTIN, FIELDS, load_vocabulary


def test_builtin_lists_are_the_published_taxonomies():
    assert len(BUILTIN["genre"]) == 15 and "Folk, World, & Country" in BUILTIN["genre"]   # Discogs
    assert len(BUILTIN["mood"]) == 56 and len(BUILTIN["instruments"]) == 40              # MTG-Jamendo
    assert set(BUILTIN) <= set(FIELDS) and load_vocabulary("builtin") == BUILTIN


def test_one_term_a_line_is_the_genre_field(tmp_path):
    f = tmp_path / "genres.txt"
    f.write_text("Synthpop\n# my list\n  Shoegaze  \n\nSynthpop\nDream Pop # the 4AD kind\n", encoding="utf-8")
    assert load_vocabulary(str(f)) == {"genre": ("Synthpop", "Shoegaze", "Dream Pop")}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_map_of_fields(tmp_path, suffix):
    data = {"genre": ["Rock", "Jazz"], "mood": ["calm", "dark"], "era": ["1970s", 1980]}
    f = tmp_path / f"vocab{suffix}"
    f.write_text(json.dumps(data) if suffix == ".json" else "genre: [Rock, Jazz]\nmood:\n  - calm\n  - dark\n"
                 "era: [1970s, 1980]\n")
    assert load_vocabulary(str(f)) == {"genre": ("Rock", "Jazz"), "mood": ("calm", "dark"), "era": ("1970s", "1980")}


@pytest.mark.parametrize("name,content,match", [
    ("missing.txt", None, "cannot read"),
    ("bin.txt", b"\xff\xfe\x00bad", "cannot read"),
    ("big.txt", b"a\n" * (1 << 20), "at most 1 MB"),
    ("list.json", b'["Rock", "Jazz"]', "a vocabulary map is"),
    ("bad.yaml", b"genre: [Rock\n", "not valid YAML"),
    ("terms.json", b'{"genre": "Rock"}', "give a list of terms"),
    ("desc.json", b'{"description": ["x"]}', "not a field"),
    ("empty.txt", b"# nothing\n\n", "no terms"),
    ("long.txt", b"x" * 101, "at most"),
])
def test_bad_files_are_one_line_errors(tmp_path, name, content, match):
    f = tmp_path / name
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(MufunError, match=match) as exc:
        load_vocabulary(str(f))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("current,value,policy,result", [
    ([], ["Rock"], "fill-empty", ["Rock"]),
    (["Owner"], ["Rock"], "fill-empty", None),                  # never over what the owner set
    (["Owner"], ["Rock"], "merge", ["Owner", "Rock"]),
    (["Owner", "Rock"], ["Rock"], "merge", None),               # nothing to add
    (["Owner"], ["Rock"], "overwrite", ["Rock"]),
    (["Rock"], ["Rock"], "overwrite", None),
    ("", "calm", "merge", "calm"),
    ("dark; sad", "calm", "merge", "dark; sad; calm"),
    ("dark; calm", "calm", "merge", None),
    (None, "calm", "fill-empty", "calm"),
])
def test_where_a_tag_lands(current, value, policy, result):
    from mufun_local.tags import landed
    assert landed(current, value, policy) == result
