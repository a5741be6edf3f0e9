"""`mufun-local serve`: a real server on a loopback port, driven by the openai client and raw HTTP."""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from mufun_local.format.model_dir import ModelDir
from mufun_local.llm.llama import Sampling
from helpers import open_model
from mufun_local.pipeline import AudioInput, Request

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")
KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(serve):
    return serve("--api-key", KEY, "--max-queue", "32", "--max-body-mb", "2", "--ctx", "2048", "--max-tokens", "16")


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def audio_message(path, fmt, question):
    return [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": b64(path), "format": fmt}},
                                         {"type": "text", "text": question}]}]


def client(base, key=KEY):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def ask_answer(model_dir, path, question, seed, max_tokens=16):
    with open_model(model_dir) as model:
        return model.ask(path, question, max_tokens=max_tokens, temperature=0.7, top_k=20, top_p=0.95,
                         seed=seed).text()


def post(base, body, key=KEY, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", data=data, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_answers_equal_ask(server, tiny_q4, audio_dir):
    song = audio_dir / "song22k.flac"
    expected = ask_answer(tiny_q4, song, "What genre is this?", seed=7)
    c = client(server)
    r = c.chat.completions.create(model="x", messages=audio_message(song, "flac", "What genre is this?"),
                                  temperature=0.7, top_p=0.95, seed=7, max_tokens=16)
    assert r.choices[0].message.content == expected
    assert r.usage.prompt_tokens > 300 and 1 <= r.usage.completion_tokens <= 16
    chunks = c.chat.completions.create(model="x", messages=audio_message(song, "flac", "What genre is this?"),
                                       temperature=0.7, top_p=0.95, seed=7, max_tokens=16, stream=True)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == expected


def test_models_health_and_auth(server):
    assert [m.id for m in client(server).models.list().data]
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    with urllib.request.urlopen(server + "/health") as r:  # no key needed
        assert json.loads(r.read())["status"] == "ok"


def test_multi_turn_and_two_audios(server, tiny_q4, audio_dir):
    song, other = audio_dir / "song22k.flac", audio_dir / "song44k.wav"
    messages = [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": b64(song), "format": "flac"}},
                                     {"type": "text", "text": " and "},
                                     {"type": "input_audio", "input_audio": {"data": b64(other), "format": "wav"}},
                                     {"type": "text", "text": " Which is faster?"}]},
        {"role": "assistant", "content": "The second one."},
        {"role": "user", "content": "Why?"},
    ]
    status, body = post(server, {"messages": messages, "max_tokens": 4, "seed": 1})
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] > 600
    from mufun_local.server.task import build_prompt
    with open_model(tiny_q4, n_ctx=2048) as fresh:  # the same conversation, answered by a fresh model
        prm, audios = build_prompt(messages, fresh.dir.manifest)
        answer = fresh.complete(prm, audios, max_tokens=4, seed=1)
        assert body["choices"][0]["message"]["content"] == answer.text()
        usage = answer.usage()
    assert body["usage"]["prompt_tokens"] == usage["prompt_tokens"] + usage["audio_tokens"] == \
        usage["prompt_tokens"] + 600


def test_rank_extension_equals_model_rank(server, tiny_q4, audio_dir):
    """`rank` answers with the terms ranked as Model.rank ranks them after the same conversation
    (itself checked against term-by-term logits in tests/pipeline); streamed, the ranking
    comes in the last chunk, after the ranking's progress."""
    song = audio_dir / "song22k.flac"
    terms = ["Rock", "Rock and Roll", "Jazz", "Hip Hop", "Classical"]
    messages = audio_message(song, "flac", "What is the genre of this music?")
    status, body = post(server, {"messages": messages, "rank": terms + ["  Jazz "]})
    assert status == 200, body
    choice = body["choices"][0]
    with open_model(tiny_q4, n_ctx=2048) as fresh:
        expected = fresh.rank(song, "What is the genre of this music?", terms)
    assert [r["term"] for r in choice["ranking"]] == [t for t, _ in expected]
    for got, (_, p) in zip(choice["ranking"], expected):
        assert got["probability"] == pytest.approx(p, abs=2e-6)
    assert choice["message"]["content"] == expected[0][0] and choice["finish_reason"] == "stop"
    assert "usage" not in body  # nothing was generated
    r = client(server).chat.completions.create(model="x", messages=messages, extra_body={"rank": terms})
    assert r.choices[0].model_extra["ranking"] == choice["ranking"]  # what docs/cli.md shows openai users

    req = urllib.request.Request(server + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"messages": messages, "rank": "genre", "stream": True}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        lines = [line.decode().strip() for line in r if line.strip()]
    events = [json.loads(line[5:]) for line in lines if line.startswith("data: {")]
    ranking = events[-1]["choices"][0]["ranking"]
    from mufun_local.tags import BUILTIN
    assert sorted(r["term"] for r in ranking) == sorted(BUILTIN["genre"])
    assert sum(r["probability"] for r in ranking) == pytest.approx(1.0, abs=1e-4)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == ranking[0]["term"]
    assert any(line.startswith(": progress rank") for line in lines)


def test_vocabularies_lists_the_builtin_ones(server):
    from mufun_local.tags import BUILTIN, field_question
    req = urllib.request.Request(server + "/v1/vocabularies", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        data = json.loads(r.read())["data"]
    assert {v["id"]: tuple(v["terms"]) for v in data} == BUILTIN
    assert all(v["question"] == field_question(v["id"]) for v in data)
    req = urllib.request.Request(server + "/v1/vocabularies")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401


@pytest.mark.parametrize("body,raw,status,match", [
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "!!notbase64", "format": "wav"}}]}]}, None, 400, "base64"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "xyz"}}]}]}, None, 400, "unsupported audio format"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}, None, 400, "empty"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": base64.b64encode(b"not audio at all" * 40).decode(), "format": "mp3"}}]}]}, None, 400, "input_audio 1: not a readable audio file"),
    (None, b"{not json", 400, "JSON"),
    ({"messages": []}, None, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, None, 400, "temperature"),
    (None, b'{"messages": "' + b"A" * (3 * 1024 * 1024) + b'"}', 413, "larger than"),
    # shapes that gave 500s and left the upload behind
    (None, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "JSON"),
    (None, b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', 400, "JSON"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "NaN"}, None, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "1e999"}, None, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": "x"}]}]}, None, 400,
     "input_audio"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": "UklGRg==", "format": "wav", "segs": [0, 10 ** 400]}}]}]}, None, 400, "segs"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": [1]}, None, 400,
     "stream_options"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, "not a part"]}]}, None, 400,
     "content part"),
    (None, b'{"messages": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, "JSON"),
    ({"messages": [{"role": "user", "content": "hi"}], "rank": "colour"}, None, 400, "no built-in vocabulary"),
    ({"messages": [{"role": "user", "content": "hi"}], "rank": [" ", ""]}, None, 400, "no terms"),
    ({"messages": [{"role": "user", "content": "hi"}], "rank": [1, 2]}, None, 400, "list of terms"),
    ({"messages": [{"role": "user", "content": "hi"}], "rank": ["x" * 101]}, None, 400, "at most"),
    ({"messages": [{"role": "user", "content": "hi"}], "rank": ["a"], "response_format": {"type": "json_object"}},
     None, 400, "no response_format"),
])
def test_bad_requests_get_4xx_and_server_keeps_serving(serve, server, audio_dir, body, raw, status, match):
    code, err = post(server, body, raw=raw)
    assert code == status, err
    assert match.lower() in err["error"]["message"].lower()
    assert "pytest-of" not in err["error"]["message"], "the server's own paths are not the client's business"
    code, ok = post(server, {"messages": [{"role": "user", "content": "Hello?"}], "max_tokens": 2})
    assert code == 200, ok
    left = list(serve.tmpdirs[server].iterdir())
    assert not left, f"uploads are decoded in memory, yet the server wrote {left}"


def test_too_long_audio_is_400(server, audio_dir):
    part = {"type": "input_audio", "input_audio": {"data": b64(audio_dir / "song22k.flac"), "format": "flac"}}
    code, err = post(server, {"messages": [{"role": "user", "content": [part] * 7 + [{"type": "text", "text": "Q?"}]}],
                              "max_tokens": 4})
    assert code == 400 and "at most" in err["error"]["message"]


def test_segs_extension(server, audio_dir):
    part = {"type": "input_audio", "input_audio": {"data": b64(audio_dir / "long48k.flac"), "format": "flac",
                                                   "segs": [1.0, 4.0]}}
    code, body = post(server, {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "Q?"}]}],
                               "max_tokens": 2})
    assert code == 200 and body["usage"]["prompt_tokens"] < 600, body


def test_twenty_concurrent_clients(server, tiny_q4, audio_dir):
    song = audio_dir / "song22k.flac"
    expected = {s: ask_answer(tiny_q4, song, "Mood?", seed=s, max_tokens=6) for s in range(4)}
    results, errors = {}, []

    def one(i):
        try:
            r = client(server).chat.completions.create(model="x", messages=audio_message(song, "flac", "Mood?"),
                                                       temperature=0.7, top_p=0.95, seed=i % 4, max_tokens=6)
            results[i] = r.choices[0].message.content
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert all(results[i] == expected[i % 4] for i in range(20))


def test_disconnect_mid_stream_frees_the_worker(server, audio_dir):
    import http.client
    song = audio_dir / "song22k.flac"
    host, port = server.replace("http://", "").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    body = json.dumps({"messages": audio_message(song, "flac", "Describe it."), "stream": True,
                       "max_tokens": 1500, "temperature": 1.0, "seed": 3})
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline()
    conn.sock.close()  # go away mid-stream
    t0 = time.time()
    code, ok = post(server, {"messages": [{"role": "user", "content": "Hello?"}], "max_tokens": 2})
    assert code == 200, ok
    with urllib.request.urlopen(server + "/health") as r:
        assert json.loads(r.read())["queued"] == 0
    assert time.time() - t0 < 60


def test_streaming_reports_progress_before_the_answer(server, audio_dir):
    """SSE comments (invisible to OpenAI clients) say what runs while the client waits."""
    msgs = audio_message(audio_dir / "long48k.flac", "flac", "What happens here?")
    msgs[0]["content"][0]["input_audio"]["segs"] = [0.5, 33.0]   # audio no other test sent: the encoder runs
    req = urllib.request.Request(server + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"messages": msgs, "stream": True, "max_tokens": 4}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        lines = [line.decode().strip() for line in r if line.strip()]
    progress = [line for line in lines if line.startswith(": progress")]
    assert any(p.startswith(": progress encoder") for p in progress)
    assert progress[-1].startswith(": progress prefill")
    done, total = map(int, progress[-1].split()[-1].split("/"))
    assert done == total > 600
    first_content = next((i for i, line in enumerate(lines) if '"content": "' in line and '"content": ""' not in line),
                         len(lines))
    assert lines.index(progress[-1]) < first_content
    assert lines[-1] == "data: [DONE]"


def _raw(base, path, method="GET", data=None, headers=()):
    req = urllib.request.Request(base + path, data=data, method=method, headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_a_web_page_cannot_use_the_server(server):
    """A page in the browser can POST text/plain without a preflight, and a rebound DNS name
    reaches loopback with the page's own Host: both are refused; no CORS header is sent."""
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    auth = {"Authorization": f"Bearer {KEY}"}
    code, out = _raw(server, "/v1/chat/completions", "POST", body, {**auth, "Content-Type": "text/plain"})
    assert code == 415 and "application/json" in json.loads(out)["error"]["message"]
    for path in ("/v1/models", "/", "/health"):
        code, out = _raw(server, path, headers={**auth, "Host": "attacker.example:8080"})
        assert code == 421 and "attacker.example" in json.loads(out)["error"]["message"], path
    code, out = _raw(server, "/v1/chat/completions", "POST", body,
                     {**auth, "Content-Type": "application/json; charset=utf-8", "Host": "localhost",
                      "Origin": "http://attacker.example"})
    assert code == 200, out
    with urllib.request.urlopen(urllib.request.Request(server + "/v1/models", headers={
            **auth, "Origin": "http://attacker.example"})) as r:
        assert not any(k.lower().startswith("access-control") for k in r.headers)


def test_host_names_and_keys():
    from mufun_local.server.http import allowed_hosts, host_name, key_matches
    assert [host_name(h) for h in ("localhost:8080", "[::1]:80", "::1", "127.0.0.1", "Example.COM")] == \
        ["localhost", "::1", "::1", "127.0.0.1", "example.com"]
    assert allowed_hosts("0.0.0.0") is None and "10.0.0.5" in allowed_hosts("10.0.0.5")
    assert "proxy.lan" in allowed_hosts("127.0.0.1", ("proxy.lan",)) and "evil" not in allowed_hosts("127.0.0.1")
    assert key_matches("Bearer k1", "k1") and not key_matches("Bearer k2", "k1") and not key_matches("", "k1")
    assert not key_matches("Bearer \u00e9", "k1")


def test_an_empty_api_key_is_an_error_not_auth_off(capsys, tiny_q4):
    from mufun_local.cli import main
    code = main(["serve", "-m", str(tiny_q4), "--api-key", " ", "--port", "1"])
    err = capsys.readouterr().err
    assert code != 0 and "--api-key is empty" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("stops", [["STOP"], ["\n\n", "END."], ["abcab"]])
def test_stop_strings_never_leak_across_pieces(stops):
    """Every way of cutting the text into streamed pieces sends exactly the text before the
    first stop string, and nothing of the stop string itself."""
    import random

    from mufun_local.server.http import StopFilter
    text = "Jazz, calm. ST then STOP and more\n\nEND. abcaabcab tail"
    firsts = [text.find(s) for s in stops if s in text]
    expected = text[:min(firsts)] if firsts else text
    rng = random.Random(0)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, 12)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        f, sent = StopFilter(stops), ""
        for p in pieces:
            sent += f.push(p)
            assert not any(s[:2] in sent[len(expected):] for s in stops if len(s) > 1)
            if f.hit:
                break
        sent += f.flush()
        assert sent == expected and f.text == expected


class _Loop:
    def call_soon_threadsafe(self, fn, *args):
        fn(*args)


class _Events(list):
    def put_nowait(self, ev):
        self.append(ev)


def _job(audio, question, **kw):
    from mufun_local.llm import prompt
    from mufun_local.server.http import Job
    return Job(prompt.build(question, 1, prompt.Template()), [AudioInput(str(audio))], Sampling(), 8, [],
               _Loop(), _Events(), **kw)


def test_a_stopped_request_frees_the_worker_and_the_next_one_is_right(tiny_q4, audio_dir):
    """Past its deadline (504) or its client gone (cancel): the worker stops at the next
    encoder window, prefill batch or token, and the next request's answer is `ask`'s."""
    from mufun_local.server.http import Worker
    song = audio_dir / "long48k.flac"
    model = open_model(tiny_q4, keep_audio_models=True)
    worker = Worker(model, 4)
    late = _job(song, "Genre?", deadline=0.0)
    worker.serve(late)
    assert [e[:2] for e in late.events] == [("error", 504)] and model.pipeline.session.loaded is None  # no compute
    gone = _job(song, "Genre?")
    stages = []

    def cancel_in_prefill(ev):
        gone.events.append(ev)
        if ev[0] == "progress":
            stages.append(ev[1])
            if ev[1] == "prefill":
                gone.cancel.set()
    gone.events.put_nowait = cancel_in_prefill
    worker.serve(gone)
    assert gone.events[-1][:2] == ("error", 499) and "prefill" in stages
    assert not any(e[0] == "delta" for e in gone.events)
    ok = _job(song, "Genre?")
    worker.serve(ok)
    text = "".join(e[1] for e in ok.events if e[0] == "delta")
    assert ok.events[-1][0] == "done" and text == ok.events[-1][1]["text"]
    model.close()
    with open_model(tiny_q4) as fresh:
        assert text == fresh.ask(song, "Genre?", request=Request(8)).text()


def test_a_full_queue_and_a_stopped_worker_answer_503_before_any_body_is_read(tiny_q4):
    from starlette.testclient import TestClient

    from mufun_local.server.http import create_app
    app = create_app(open_model(tiny_q4, n_ctx=1024), max_queue=1, max_tokens=2)
    worker = app.state.worker
    read = []

    def body():  # a streamed upload: the server must answer without pulling it
        read.append(1)
        yield b'{"messages": [{"role": "user", "content": "hi"}]}'
    with TestClient(app) as c:
        worker.jobs.put(None)  # the worker stops, as if it had died
        worker.join(timeout=10)
        assert c.get("/health").status_code == 503
        r = c.post("/v1/chat/completions", content=body(), headers={"Content-Type": "application/json"})
        assert r.status_code == 503 and "worker stopped" in r.json()["error"]["message"]
        worker.is_alive = lambda: True  # alive again, but its queue is full
        worker.jobs.put_nowait(object())
        r = c.post("/v1/chat/completions", content=body(), headers={"Content-Type": "application/json"})
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert not read, "a refused request's body was read"
    app.state.model.close()


# ------------------------------------------------------------------ request handling, with no model running

@pytest.fixture
def fake_app(tiny_q4):
    """The server around a FakeModel: the HTTP and queue logic in milliseconds."""
    from starlette.testclient import TestClient

    from helpers import FakeModel
    from mufun_local.server.http import create_app
    fake = FakeModel(ModelDir.open(tiny_q4), words=6, stop_after=None, n_ctx=1024)
    app = create_app(fake, max_tokens=4, api_key=KEY)
    with TestClient(app) as c:
        yield c, fake


def test_stream_and_request_options_reach_the_pipeline(fake_app):
    c, fake = fake_app
    body = {"model": "m", "stream": True, "max_tokens": 3, "temperature": 0.5, "seed": 7,
            "messages": [{"role": "user", "content": "hi"}]}
    r = c.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    events = [line for line in r.text.split("\n\n") if line]
    progress = [i for i, e in enumerate(events) if e.startswith(": progress")]
    first_text = next(i for i, e in enumerate(events) if '"content": "a"' in e)
    assert progress and progress[0] < first_text and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events if e.startswith("data: {")]
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    assert text == "a b c" and chunks[-1]["choices"][0]["finish_reason"] == "length"
    req = fake.calls[-1][2]
    assert (req.max_tokens, req.sampling.temperature, req.sampling.seed) == (3, 0.5, 7)
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
               headers={"Authorization": f"Bearer {KEY}"})
    assert r.json()["choices"][0]["message"]["content"] == "a b c d"  # the server's default, 4
    assert fake.calls[-1][2].max_tokens == 4


def test_an_early_stop_is_finish_reason_stop_and_usage_counts(fake_app):
    c, fake = fake_app
    fake.stop_after = 2
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
               headers={"Authorization": f"Bearer {KEY}"})
    out = r.json()
    assert out["choices"][0]["message"]["content"] == "a b" and out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 2 and out["usage"]["prompt_tokens"] == 10
    assert c.post("/v1/chat/completions", json={"messages": []}).status_code == 401
