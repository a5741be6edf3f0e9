"""Constrained answers: a JSON Schema or a GBNF grammar becomes llama.cpp's grammar sampler.

llama-cpp-python converts JSON Schema to GBNF (its port of llama.cpp's
json-schema-to-grammar); the grammar masks every token that would leave the language, and
end-of-text is allowed only where the grammar accepts. Types, enums, const, required and
optional properties, arrays with item counts and string lengths are enforced while
sampling; what the converter cannot express (numeric minimum/maximum, patterns it skips)
is checked afterwards with jsonschema, as is an answer cut off by --max-tokens: both are a
clear error, never an invalid answer passed on as valid.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MufunError, first_line


# llama-cpp-python's converter lets a string hold raw control characters, which JSON does not
# (llama.cpp's own converter excludes them): its `char` rule is narrowed to JSON's. It also
# leaves out what is not a character at all: llama.cpp's grammar reads bytes that are not
# UTF-8 (a lead byte F5-FF, an encoded surrogate) as one "code point" each, above U+10FFFF or
# in D800-DFFF, where the text decodes to several U+FFFD; a string the grammar kept within
# maxLength then broke it (random weights did this for most tag answers).
_ANY_CHAR = r'char ::= [^"\\]'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F\uD800-\uDFFF\U00110000-\U003FFFFF]'


def schema_grammar(schema: dict | str) -> str:
    """GBNF for a JSON Schema (a dict, or its JSON text)."""
    from llama_cpp.llama_grammar import LlamaGrammar
    text = schema if isinstance(schema, str) else json.dumps(schema)
    try:
        json.loads(text)
        grammar = LlamaGrammar.from_json_schema(text, verbose=False)._grammar
        return "\n".join(_JSON_CHAR + line[len(_ANY_CHAR):] if line.startswith(_ANY_CHAR) else line
                         for line in grammar.splitlines())
    except (ValueError, KeyError, TypeError, NotImplementedError, RecursionError) as exc:
        raise MufunError(f"the JSON Schema cannot be turned into a grammar ({type(exc).__name__}: "
                         f"{first_line(exc) if str(exc).strip() else 'unsupported'})") from None


def json_grammar() -> str:
    """GBNF for any JSON object (OpenAI's response_format json_object)."""
    from llama_cpp.llama_grammar import JSON_GBNF
    return JSON_GBNF


def load_schema(path: str) -> dict:
    try:
        schema = json.loads(read_file(path, "JSON Schema"))
    except ValueError:
        raise MufunError(f"{path}: the JSON Schema is not valid JSON") from None
    if not isinstance(schema, dict):
        raise MufunError(f"{path}: a JSON Schema is a JSON object")
    return schema


def read_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MufunError(f"{path}: cannot read the {what} ({getattr(exc, 'strerror', None) or exc})") from None


def finished_json(text: str, max_tokens: int, schema: dict | None = None):
    """The constrained answer parsed and checked against the schema; a clear error when
    --max-tokens cut it off, or when it breaks a constraint the grammar cannot express
    (llama-cpp-python's converter does not encode numeric ranges, for one)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise MufunError(f"the answer did not finish its JSON within {max_tokens} tokens; "
                         f"raise --max-tokens") from None
    if schema is not None:
        import jsonschema
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(map(str, exc.absolute_path)) or "the answer"
            raise MufunError(f"the answer is JSON but breaks the schema at {where}: {exc.message[:200]}") from None
        except jsonschema.SchemaError as exc:
            raise MufunError(f"the JSON Schema is not valid: {exc.message[:200]}") from None
    return value
