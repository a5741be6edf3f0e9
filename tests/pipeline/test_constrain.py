"""Schema-constrained answers (llama.cpp's grammar sampler): valid JSON of the schema, from
`ask --schema`, and from `serve` through OpenAI's response_format."""
from __future__ import annotations

import json

import jsonschema
import pytest

from mufun_local.cli import main

SCHEMAS = {
    "enum": {"type": "object", "properties": {"genre": {"enum": ["jazz", "rock", "classical", "electronic"]}},
             "required": ["genre"], "additionalProperties": False},
    "array": {"type": "object", "properties": {"instruments": {
        "type": "array", "items": {"enum": ["piano", "drums", "bass", "guitar", "voice"]}, "minItems": 1,
        "maxItems": 3}}, "required": ["instruments"], "additionalProperties": False},
    "numbers": {"type": "object", "properties": {"energy": {"type": "number"}, "bpm": {"type": "integer"},
                                                 "vocals": {"type": "boolean"}},
                "required": ["energy", "bpm", "vocals"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "tags": {"type": "object", "properties": {
            "mood": {"type": "string", "maxLength": 12}, "tempo": {"enum": ["slow", "medium", "fast"]}},
            "required": ["mood", "tempo"], "additionalProperties": False},
        "summary": {"type": "string", "maxLength": 20}}, "required": ["tags", "summary"],
        "additionalProperties": False},
}


@pytest.mark.parametrize("name", list(SCHEMAS))
@pytest.mark.parametrize("temperature", ["0", "1.0"])
def test_ask_schema_answers_validate(capsys, tmp_path, tiny_q4, audio_dir, name, temperature):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMAS[name]))
    code = main(["ask", "-m", str(tiny_q4), str(audio_dir / "song22k.flac"), "Tag this song.", "--schema",
                 str(path), "--json", "--max-tokens", "120", "--temperature", temperature, "--seed", "3",
                 "--no-cache", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    jsonschema.validate(res["parsed"], SCHEMAS[name])
    assert json.loads(res["text"]) == res["parsed"]


def test_cut_off_schema_answer_and_bad_inputs_are_one_line_errors(capsys, tmp_path, tiny_q4, audio_dir):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMAS["nested"]))
    song = str(audio_dir / "song22k.flac")
    cases = [(["--schema", str(schema), "--max-tokens", "3"], "did not finish its JSON within 3 tokens"),
             (["--schema", str(tmp_path / "missing.json")], "cannot read the JSON Schema"),
             (["--grammar", str(schema)], "cannot parse the grammar"),
             (["--schema", str(schema), "--grammar", str(schema)], "not both")]
    (tmp_path / "bad.json").write_text("{not json")
    cases.append((["--schema", str(tmp_path / "bad.json")], "not valid JSON"))
    ranged = tmp_path / "ranged.json"  # a numeric range the grammar cannot hold: checked afterwards
    ranged.write_text(json.dumps({"type": "object", "properties": {"energy": {"type": "integer", "maximum": 0,
                                                                              "minimum": 0}},
                                  "required": ["energy"], "additionalProperties": False}))
    cases.append((["--schema", str(ranged), "--max-tokens", "60", "--temperature", "0"], "breaks the schema at energy"))
    for extra, match in cases:
        code = main(["ask", "-m", str(tiny_q4), song, "Q?", "--no-cache", *extra])
        err = capsys.readouterr().err
        assert code != 0 and match in err and len(err.strip().splitlines()) == 1, (extra, err)


def test_a_grammar_file_constrains_the_answer(capsys, tmp_path, tiny_q4, audio_dir):
    g = tmp_path / "yesno.gbnf"
    g.write_text('root ::= ("yes" | "no") "."\n')
    code = main(["ask", "-m", str(tiny_q4), str(audio_dir / "song22k.flac"), "Vocals?", "--grammar", str(g),
                 "--max-tokens", "10", "--no-cache", "-q"])
    out = capsys.readouterr().out.strip()
    assert code == 0 and out in ("yes.", "no.")


def test_serve_response_format(serve, audio_dir):
    import base64

    openai = pytest.importorskip("openai")
    base = serve("--max-tokens", "120", "--ctx", "2048")
    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120)
    audio = base64.b64encode((audio_dir / "song22k.flac").read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "flac"}},
                                             {"type": "text", "text": "Tag it."}]}]
    r = client.chat.completions.create(model="x", messages=messages, temperature=0, response_format={
        "type": "json_schema", "json_schema": {"name": "tags", "schema": SCHEMAS["numbers"]}})
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMAS["numbers"])
    r = client.chat.completions.create(model="x", messages=messages, temperature=0,
                                       response_format={"type": "json_object"}, max_tokens=120)
    assert r.choices[0].finish_reason == "length" or isinstance(json.loads(r.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=messages, response_format={"type": "xml"})


def test_a_bad_grammar_is_one_line_from_a_real_process(tmp_path, tiny_q4, audio_dir):
    """llama.cpp's grammar parser prints its complaint on the C stderr: not to the user."""
    import subprocess
    import sys
    g = tmp_path / "bad.gbnf"
    g.write_text("not a grammar\n")
    proc = subprocess.run([sys.executable, "-m", "mufun_local", "ask", "-m", str(tiny_q4),
                           str(audio_dir / "song22k.flac"), "Q?", "--grammar", str(g), "--no-cache"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        "error: llama.cpp cannot parse the grammar (GBNF with a root rule expected)"], proc.stderr
