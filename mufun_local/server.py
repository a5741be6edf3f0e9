"""`mufun-local serve`: an OpenAI-compatible chat-completions server (Starlette + uvicorn).

One model per process and one worker thread that owns it (llama.cpp is not re-entrant
per context): requests wait in a bounded queue and are served in order; a full queue
answers 503 with Retry-After. Audio arrives as `input_audio` content parts (base64 data +
format). Bad requests get a 4xx JSON error in OpenAI's shape and the server keeps serving;
a client that disconnects mid-stream cancels its generation.

System messages are accepted and ignored: MuFun was trained with one fixed system prompt.
One extension: an `input_audio` part may carry `"segs": [start, end]` (seconds) to use only
that part of the file, as `ask --segs` does.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import os
import queue
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from . import prompt as prompt_mod
from .modeldir import ModelDir
from .errors import MufunError
from .llm import Sampling
from .pipeline import AudioInput, Options, Pipeline, Request

AUDIO_FORMATS = {"wav", "mp3", "flac", "ogg", "opus", "m4a", "aac", "webm", "oga", "mp4", "aiff", "wma"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, etype: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


# ------------------------------------------------------------------ request -> prompt


@dataclass
class Job:
    prompt: prompt_mod.Prompt
    audios: list[AudioInput]
    sampling: Sampling
    max_tokens: int
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    tmpdir: str                      # the request's audio files; removed when the job ends
    deadline: float = math.inf       # time.monotonic() after which the job is stopped (504)
    cancel: threading.Event = field(default_factory=threading.Event)


class Stopped(Exception):
    """Raised inside the pipeline (at its next encoder window, prefill batch or token) when
    the client went away or the request ran past its deadline."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_job(job: Job) -> None:
    if job.cancel.is_set():
        raise Stopped(499, "the client went away")
    if time.monotonic() > job.deadline:
        raise Stopped(504, "the request took longer than the server's --request-timeout")


class StopFilter:
    """Streams text while watching for stop strings: text that could be the start of a stop
    string is held back until the next piece says whether it is one, so no part of a stop
    string spanning two pieces reaches the client."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text, self.sent, self.hit = "", 0, False

    def push(self, piece: str) -> str:
        """Add a piece; returns what may be sent now (sets .hit at a stop string)."""
        self.text += piece
        cuts = [self.text.find(s, self.sent) for s in self.stops]  # what was sent holds none
        cuts = [c for c in cuts if c >= 0]
        if cuts:
            self.text, self.hit = self.text[:min(cuts)], True
            return self._take(len(self.text))
        hold = max((k for s in self.stops for k in range(min(len(s) - 1, len(self.text)), 0, -1)
                    if self.text.endswith(s[:k])), default=0)
        return self._take(len(self.text) - hold)

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        out, self.sent = self.text[self.sent:upto], max(self.sent, upto)
        return out


def _user_text(content, audios: list[AudioInput], tmpdir: str, template: prompt_mod.Template) -> str:
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise RequestError(400, "message content must be a string or a list of parts", "messages")
    marker = template.marker
    text, n_audio = "", 0
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            t = str(part.get("text", ""))
            if marker in t:
                raise RequestError(400, f"text parts may not contain {marker}; send audio as input_audio parts",
                                   "messages")
            text += t
        elif kind == "input_audio":
            text += marker
            n_audio += 1
            spec = part.get("input_audio")
            if not isinstance(spec, dict):
                raise RequestError(400, "input_audio must be an object with data and format", "messages")
            audios.append(AudioInput(_save_audio(spec, tmpdir, len(audios)), _segs(spec.get("segs"))))
        else:
            raise RequestError(400, f"unsupported content part type {kind!r} (use text or input_audio)", "messages")
    return template.user(text, n_audio) if n_audio else text


def _segs(value) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(400, "input_audio.segs must be [start, end] in seconds", "messages") from None
    if not (math.isfinite(end) and 0 <= start < end):
        raise RequestError(400, "input_audio.segs must satisfy 0 <= start < end", "messages")
    return start, end


def _save_audio(spec: dict, tmpdir: str, index: int) -> str:
    fmt = str(spec.get("format", "")).lower().lstrip(".")
    if fmt not in AUDIO_FORMATS:
        raise RequestError(400, f"unsupported audio format {fmt!r}; use one of {', '.join(sorted(AUDIO_FORMATS))}",
                           "messages", "unsupported_audio_format")
    try:
        data = base64.b64decode(spec.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise RequestError(400, "input_audio.data is not valid base64", "messages", "invalid_base64") from None
    if not data:
        raise RequestError(400, "input_audio.data is empty", "messages", "empty_audio")
    path = os.path.join(tmpdir, f"audio{index}.{fmt}")
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def build_prompt(messages, manifest: dict, tmpdir: str) -> tuple[prompt_mod.Prompt, list[AudioInput]]:
    """OpenAI messages -> the original template's text pieces around the audios."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "messages")
    template = prompt_mod.Template.of(manifest)
    audios: list[AudioInput] = []
    turns: list[tuple[str, str]] = []
    expect = "user"
    for msg in messages:
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "system":
            continue
        if role not in ("user", "assistant"):
            raise RequestError(400, f"unsupported message role {role!r}", "messages")
        if role != expect:
            raise RequestError(400, "messages must alternate user and assistant turns, starting and ending "
                               "with a user turn", "messages")
        if role == "user":
            turns.append(("user", _user_text(msg.get("content"), audios, tmpdir, template)))
            expect = "assistant"
        else:
            content = msg.get("content")
            if isinstance(content, list):
                content = "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            turns.append(("assistant", str(content or "")))
            expect = "user"
    if expect != "assistant":
        raise RequestError(400, "the last message must be a user turn", "messages")
    return prompt_mod.render(template, turns), audios


# ------------------------------------------------------------------ the worker


class Worker(threading.Thread):
    """Owns the pipeline; runs one job at a time, in arrival order."""

    def __init__(self, pipe: Pipeline, max_queue: int):
        super().__init__(daemon=True, name="mufun-worker")
        self.pipe = pipe
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.busy = False

    def submit(self, job: Job) -> None:
        self.jobs.put_nowait(job)  # queue.Full -> 503

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            self.busy = True
            try:
                self._serve(job)
            except BaseException as exc:  # the thread must outlive any one request
                self._emit(job, "error", 500, f"internal error: {type(exc).__name__}")
            finally:
                self.busy = False
                _rmtree(job.tmpdir)

    def _public(self, job: Job, message: str) -> str:
        """An error message for the client: the server's own paths (the upload folder, the
        model directory) are not the client's business."""
        for i, a in enumerate(job.audios):
            message = message.replace(a.path, f"input_audio {i + 1}")
        return message.replace(job.tmpdir, "<upload>").replace(str(self.pipe.model.path), "<model>")

    def _emit(self, job: Job, *event) -> None:
        job.loop.call_soon_threadsafe(job.events.put_nowait, event)

    def _serve(self, job: Job) -> None:
        pipe = self.pipe
        if job.cancel.is_set():
            return

        def progress(stage: str, done: int, total: int) -> None:
            check_job(job)  # stops the work between encoder windows, prefill batches and tokens
            if stage in ("encoder", "prefill"):  # the long stages, as SSE comments
                self._emit(job, "progress", stage, done, total)
        stream = pipe.complete(job.prompt, job.audios, Request(job.max_tokens, job.sampling, progress=progress))
        out, finish = StopFilter(job.stop), "length"
        try:
            first = True
            for piece in stream:
                if first:
                    self._emit(job, "start")
                    first = False
                check_job(job)
                send = out.push(piece)
                if send:
                    self._emit(job, "delta", send)
                if out.hit:
                    finish = "stop"
                    break
            else:
                if first:
                    self._emit(job, "start")
                finish = "stop" if stream.result.stopped == "stop" else "length"
            tail = out.flush()
            if tail:
                self._emit(job, "delta", tail)
        except Stopped as exc:
            self._emit(job, "error", exc.status, exc.message)
            return
        except MufunError as exc:
            self._emit(job, "error", 400, self._public(job, str(exc)))
            return
        except Exception as exc:  # never let one request take the worker down
            self._emit(job, "error", 500, self._public(job, f"internal error: {type(exc).__name__}: {exc}"))
            return
        finally:
            stream.close()
        res = stream.result
        completion = len([t for t in res.tokens if t not in pipe.stop_ids])
        self._emit(job, "done", {"text": out.text, "finish": finish,
                                 "prompt_tokens": res.prompt_tokens + res.audio_tokens,
                                 "completion_tokens": completion})


# ------------------------------------------------------------------ the app


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(bind_host: str, extra: tuple[str, ...] = ()) -> set[str] | None:
    """Host header names this server answers to: the loopback names and the bound address,
    plus `extra` (names a reverse proxy forwards). None (any name) when bound to every
    interface, where the API key is the guard. A page on another site that resolves its own
    name to 127.0.0.1 (DNS rebinding) sends its own name, and is refused."""
    if bind_host in ("0.0.0.0", "::", ""):
        return None
    return {h.lower() for h in (*LOOPBACK_NAMES, bind_host.strip("[]"), *extra)}


def host_name(header: str) -> str:
    """The name part of a Host header: `[::1]:8080` -> `::1`, `localhost:8080` -> `localhost`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def key_matches(authorization: str, api_key: str) -> bool:
    """`Authorization: Bearer KEY`, compared in constant time."""
    import hmac
    return hmac.compare_digest(authorization.encode("utf-8", "replace"), f"Bearer {api_key}".encode())


def create_app(model: ModelDir, options: Options, api_key: str | None = None, max_queue: int = 32,
               max_body_mb: float = 64.0, cache=None, model_id: str | None = None, prefix_cache=None,
               hosts: set[str] | None = None, request_timeout: float = 600.0, max_uploads: int = 2,
               max_tokens: int = 512, pipeline: Pipeline | None = None):
    """The ASGI app. `hosts`: Host header names it answers (see allowed_hosts; None: any);
    `request_timeout`: seconds a request may take from its arrival; `max_uploads`: request
    bodies read and decoded at once (each holds ~4x its size until its audio is on disk);
    `max_tokens`: a request's answer length when it does not say; `pipeline`: what answers
    (default: a Pipeline of `model` and `options`, its LLM loaded up front; tests pass a fake)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    if api_key is not None and not api_key.strip():
        raise MufunError("the API key is empty; give a real key, or none to serve without one")
    pipe = pipeline
    if pipe is None:
        pipe = Pipeline(model, options, cache=cache, prefix_cache=prefix_cache)
        pipe.llm.open_context(options.n_ctx, options.n_batch, options.f32_kv, options.flash_attn)  # loaded once
    worker = Worker(pipe, max_queue)
    worker.start()
    api = _Api(model, options, worker, api_key, max_body_mb, model_id, request_timeout, max_uploads, max_tokens)
    routes = [
        Route("/health", api.health),
        Route("/v1/models", api.models),
        Route("/v1/chat/completions", api.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes + _static_routes())
    if hosts is not None:
        app.add_middleware(_HostCheck, hosts=hosts)
    app.state.worker = worker
    app.state.pipeline = pipe
    return app


def _err(status: int, message: str, param=None, code=None, headers=None):
    """An OpenAI-shaped error response."""
    from starlette.responses import JSONResponse
    etype = "invalid_request_error" if status < 500 else ("server_busy" if status == 503 else "server_error")
    if status == 401:
        etype = "authentication_error"
    return JSONResponse(error_body(message, etype, param, code), status_code=status, headers=headers)


def _usage(d: dict) -> dict:
    return {"prompt_tokens": d["prompt_tokens"], "completion_tokens": d["completion_tokens"],
            "total_tokens": d["prompt_tokens"] + d["completion_tokens"]}


class _Api:
    """The routes of one server: request checks, body reading and parsing off the event loop,
    the queue to the worker, and the answer as JSON or as server-sent events."""

    def __init__(self, model: ModelDir, options: Options, worker: Worker, api_key: str | None, max_body_mb: float,
                 model_id: str | None, request_timeout: float, max_uploads: int, max_tokens: int):
        self.model, self.options, self.worker, self.api_key = model, options, worker, api_key
        self.max_body_mb, self.max_body = max_body_mb, int(max_body_mb * 1024 * 1024)
        self.mid = model_id or model.manifest["source"]["id"]
        self.request_timeout, self.max_tokens = request_timeout, max_tokens
        self.uploads = asyncio.Semaphore(max(1, max_uploads))
        self.created = int(time.time())

    def authorized(self, request) -> bool:
        return self.api_key is None or key_matches(request.headers.get("authorization", ""), self.api_key)

    async def health(self, request):
        from starlette.responses import JSONResponse
        if not self.worker.is_alive():
            return JSONResponse({"status": "error", "detail": "the worker thread stopped"}, status_code=503)
        return JSONResponse({"status": "ok", "queued": self.worker.jobs.qsize(), "busy": self.worker.busy})

    async def models(self, request):
        from starlette.responses import JSONResponse
        if not self.authorized(request):
            return _err(401, "missing or wrong API key (Authorization: Bearer ...)")
        return JSONResponse({"object": "list", "data": [
            {"id": self.mid, "object": "model", "created": self.created, "owned_by": "mufun-local"}]})

    def sampling_from(self, body: dict) -> tuple[Sampling, int, list[str]]:
        def num(name, cast, default, lo=None, hi=None):
            v = body.get(name, default)
            if v is None:
                v = default
            try:
                v = cast(v)
            except (TypeError, ValueError, OverflowError):
                raise RequestError(400, f"{name} must be a number", name) from None
            if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
                raise RequestError(400, f"{name} must be between {lo} and {hi}", name)
            return v

        def given(name, cast, lo=None, hi=None):
            return None if body.get(name) is None else num(name, cast, None, lo, hi)
        answer_tokens = num("max_tokens", int, body.get("max_completion_tokens") or self.max_tokens, 1,
                            self.options.n_ctx)
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
            raise RequestError(400, "stop must be a string or a list of up to 4 strings", "stop")
        sampling = self.model.sampling(given("temperature", float, 0, 2), given("top_p", float, 0, 1),
                                       seed=given("seed", int), grammar=response_grammar(body.get("response_format")))
        return sampling, answer_tokens, stop

    def parse_request(self, raw: bytes | bytearray, tmpdir: str):
        body = parse_body(raw)
        prm, audios = build_prompt(body.get("messages"), self.model.manifest, tmpdir)
        sampling, max_tokens, stop = self.sampling_from(body)
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise RequestError(400, "stream_options must be an object", "stream_options")
        return body, prm, audios, sampling, max_tokens, stop, stream_options

    @staticmethod
    async def next_event(job: Job, request):
        """The job's next event; a client that goes away meanwhile cancels the job (the
        worker notices at its next encoder window, prefill batch or token)."""
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel.set()
                    raise asyncio.CancelledError from None

    async def read_request(self, request):
        """The parsed request (its audio written to a new folder), or an error response."""
        async with self.uploads:
            raw, size = bytearray(), 0
            async for chunk in request.stream():  # read to the end even when too large, so the
                size += len(chunk)                 # client sees the 413 rather than a broken pipe
                if size <= self.max_body:
                    raw += chunk
            if size > self.max_body:
                return _err(413, f"request body larger than {self.max_body_mb:g} MB")
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":  # a web page's form or text/plain POST needs no preflight
                return _err(415, "Content-Type must be application/json")
            tmpdir = tempfile.mkdtemp(prefix="mufun-serve-")
            try:  # parsing and base64 decoding off the event loop; the audio goes to disk
                return (*await asyncio.to_thread(self.parse_request, raw, tmpdir), tmpdir)
            except RequestError as exc:
                _rmtree(tmpdir)
                return _err(exc.status, exc.message, exc.param, exc.code)
            except Exception as exc:  # a shape nothing above checks: still the client's error, and no leak
                _rmtree(tmpdir)
                return _err(400, f"malformed request ({type(exc).__name__})")
            finally:
                del raw

    async def completions(self, request):
        if not self.authorized(request):
            return _err(401, "missing or wrong API key (Authorization: Bearer ...)")
        if not self.worker.is_alive():
            return _err(503, "the server's worker stopped; restart the server")
        if self.worker.jobs.full():  # before reading what may be a large body
            return _err(503, "the server is busy; retry shortly", headers={"Retry-After": "5"})
        arrived = time.monotonic()
        parsed = await self.read_request(request)
        if not isinstance(parsed, tuple):
            return parsed
        body, prm, audios, sampling, max_tokens, stop, stream_options, tmpdir = parsed
        job = Job(prm, audios, sampling, max_tokens, stop, asyncio.get_running_loop(), asyncio.Queue(), tmpdir,
                  deadline=arrived + self.request_timeout)
        try:
            self.worker.submit(job)
        except queue.Full:
            _rmtree(tmpdir)
            return _err(503, "the server is busy; retry shortly", headers={"Retry-After": "5"})
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": self.mid}
        streaming = False
        try:
            first = await self.next_event(job, request)
            while first[0] == "progress" and not body.get("stream"):
                first = await self.next_event(job, request)
            if first[0] == "error":
                return _err(first[1], first[2])
            if not body.get("stream"):
                return await self.answer_json(job, request, base)
            streaming = True
        finally:
            if not streaming:
                job.cancel.set()  # done, failed, or the client went away while waiting
        return self.answer_stream(job, base, bool(stream_options.get("include_usage")))

    async def answer_json(self, job: Job, request, base: dict):
        from starlette.responses import JSONResponse
        while True:
            ev = await self.next_event(job, request)
            if ev[0] == "error":
                return _err(ev[1], ev[2])
            if ev[0] == "done":
                break
        d = ev[1]
        return JSONResponse({**base, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": d["text"]}, "finish_reason": d["finish"]}],
            "usage": _usage(d)})

    @staticmethod
    def answer_stream(job: Job, base: dict, include_usage: bool):
        from starlette.responses import StreamingResponse

        async def sse():
            chunk = {**base, "object": "chat.completion.chunk"}
            try:
                yield _sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                  "finish_reason": None}]})
                while True:
                    ev = await job.events.get()
                    if ev[0] == "progress":
                        yield f": progress {ev[1]} {ev[2]}/{ev[3]}\n\n"
                    elif ev[0] == "delta":
                        yield _sse({**chunk, "choices": [{"index": 0, "delta": {"content": ev[1]},
                                                          "finish_reason": None}]})
                    elif ev[0] == "error":
                        yield _sse(error_body(ev[2], "server_error"))
                        break
                    elif ev[0] == "done":
                        d = ev[1]
                        yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": d["finish"]}]})
                        if include_usage:
                            yield _sse({**chunk, "choices": [], "usage": _usage(d)})
                        break
                yield "data: [DONE]\n\n"
            finally:
                job.cancel.set()  # a client that went away stops its generation

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _HostCheck:
    """ASGI middleware: a request whose Host header names another host gets a 421 in
    OpenAI's error shape before any route runs (DNS rebinding)."""

    def __init__(self, app, hosts: set[str]):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_name(header) not in self.hosts:
                from starlette.responses import JSONResponse
                resp = JSONResponse(error_body(f"Host {header[:100]!r} is not served here "
                                               f"(serve --allow-host NAME adds a name)"), status_code=421)
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _static_routes() -> list:
    """The web page (served at /), when the package ships it."""
    from pathlib import Path

    from starlette.responses import FileResponse
    from starlette.routing import Route

    page = Path(__file__).parent / "web" / "index.html"
    if not page.is_file():
        return []

    async def index(request):
        return FileResponse(page, media_type="text/html")
    return [Route("/", index)]


def response_grammar(fmt) -> str | None:
    """OpenAI's response_format as a grammar: text (none), json_object, or json_schema."""
    from . import constrain
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return constrain.json_grammar()
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError(400, "response_format.json_schema.schema must be a JSON Schema object",
                               "response_format")
        try:
            return constrain.schema_grammar(schema)
        except MufunError as exc:
            raise RequestError(400, str(exc), "response_format") from None
    raise RequestError(400, "response_format.type must be text, json_object or json_schema", "response_format")


def parse_body(raw: bytes) -> dict:
    """The request's JSON object; NaN/Infinity (which Python's json accepts) and nesting
    deep enough to exhaust the parser are refused as 400s."""
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")
    try:
        body = json.loads(raw, parse_constant=no_constants)
    except (ValueError, RecursionError):
        raise RequestError(400, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _rmtree(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)
