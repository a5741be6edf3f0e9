"""`mufun-local serve`: an OpenAI-compatible chat-completions server (Starlette + uvicorn).
This module is its HTTP side (routes, checks, the answer as JSON or server-sent events);
server_task.py turns a request body into a job, server_queue.py runs the jobs.

One model per process and one worker thread that owns it: requests wait in a bounded queue
and are served in order; a full queue answers 503 with Retry-After. Audio arrives as
`input_audio` content parts (base64 data + format) and is decoded from memory (a queued
request holds its audio, at most --max-body-mb, until it is answered; nothing is written to
disk). Bad requests get a 4xx JSON error in OpenAI's shape and the server keeps serving; a
client that disconnects mid-stream cancels its generation.

System messages are accepted and ignored: MuFun was trained with one fixed system prompt.
Two extensions: an `input_audio` part may carry `"segs": [start, end]` (seconds) to use only
that part of the file, as `ask --segs` does; and a body may carry `"rank"`: a list of terms (or
a built-in vocabulary's name, e.g. "genre"), answered by ranking them (`Model.rank`): the
message is the most likely term and the choice carries `"ranking"`, every term with its
probability, most likely first (and no usage: nothing is generated). GET /v1/vocabularies
lists the built-in ones with the question each answers.
"""
from __future__ import annotations

import asyncio
import json
import queue
import time
import uuid

from ..errors import MufunError
from ..format.model_dir import ModelDir
from ..options import Options
from .worker import Stopped, Worker, check_job  # noqa: F401  (the server's API)
from .task import (AUDIO_FORMATS, Job, RequestError, StopFilter, build_prompt, error_body,  # noqa: F401
                   parse_body, rank_terms, request_settings, response_grammar)

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


def create_app(model, api_key: str | None = None, max_queue: int = 32, max_body_mb: float = 64.0,
               model_id: str | None = None, hosts: set[str] | None = None, request_timeout: float = 600.0,
               max_uploads: int = 2, max_tokens: int = 512):
    """The ASGI app answering with `model` (a mufun_local.Model; its LLM is loaded up front).
    `hosts`: Host header names it answers (see allowed_hosts; None: any); `request_timeout`:
    seconds a request may take from its arrival; `max_uploads`: request bodies read and decoded
    at once (each holds ~4x its size while parsed, then its audio); `max_tokens`: a request's
    answer length when it does not say."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    if api_key is not None and not api_key.strip():
        raise MufunError("the API key is empty; give a real key, or none to serve without one")
    model.load()  # the weights load once, before the first request
    worker = Worker(model, max_queue)
    worker.start()
    api = _Api(model.dir, model.options, worker, api_key, max_body_mb, model_id, request_timeout, max_uploads,
               max_tokens)
    routes = [
        Route("/health", api.health),
        Route("/v1/models", api.models),
        Route("/v1/vocabularies", api.vocabularies),
        Route("/v1/chat/completions", api.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes + _static_routes())
    if hosts is not None:
        app.add_middleware(_HostCheck, hosts=hosts)
    app.state.worker = worker
    app.state.model = model
    return app


def _err(status: int, message: str, param=None, code=None, headers=None):
    """An OpenAI-shaped error response."""
    from starlette.responses import JSONResponse
    etype = "invalid_request_error" if status < 500 else ("server_busy" if status == 503 else "server_error")
    if status == 401:
        etype = "authentication_error"
    return JSONResponse(error_body(message, etype, param, code), status_code=status, headers=headers)


def _ranking(d: dict) -> dict:
    """A ranked answer's terms and probabilities, for its choice (nothing for generated text)."""
    if d.get("ranking") is None:
        return {}
    return {"ranking": [{"term": t, "probability": round(p, 6)} for t, p in d["ranking"]]}


def _usage(d: dict) -> dict:
    """{"usage": ...} for generated text; nothing for a ranked answer (no token was generated)."""
    if "prompt_tokens" not in d:
        return {}
    return {"usage": {"prompt_tokens": d["prompt_tokens"], "completion_tokens": d["completion_tokens"],
                      "total_tokens": d["prompt_tokens"] + d["completion_tokens"]}}


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

    async def vocabularies(self, request):
        """The built-in vocabularies a `rank` may name, each with the question it answers."""
        from starlette.responses import JSONResponse

        from ..tags import builtin_vocabulary, field_question
        if not self.authorized(request):
            return _err(401, "missing or wrong API key (Authorization: Bearer ...)")
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "vocabulary", "question": field_question(name), "terms": list(terms)}
            for name, terms in builtin_vocabulary().items()]})

    def parse_request(self, raw: bytes | bytearray):
        body = parse_body(raw)
        prm, audios = build_prompt(body.get("messages"), self.model.manifest)
        sampling, max_tokens, stop = request_settings(body, self.model, self.max_tokens, self.options.n_ctx)
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise RequestError(400, "stream_options must be an object", "stream_options")
        return body, prm, audios, sampling, max_tokens, stop, stream_options, rank_terms(body)

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
        """The parsed request (its audio decoded from base64, in memory), or an error response."""
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
            try:  # parsing and base64 decoding off the event loop
                return await asyncio.to_thread(self.parse_request, raw)
            except RequestError as exc:
                return _err(exc.status, exc.message, exc.param, exc.code)
            except Exception as exc:  # a shape nothing above checks: still the client's error
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
        body, prm, audios, sampling, max_tokens, stop, stream_options, rank = parsed
        job = Job(prm, audios, sampling, max_tokens, stop, asyncio.get_running_loop(), asyncio.Queue(),
                  deadline=arrived + self.request_timeout, rank=rank)
        try:
            self.worker.submit(job)
        except queue.Full:
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
        return self.answer_stream(job, first, base, bool(stream_options.get("include_usage")))

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
            "index": 0, "message": {"role": "assistant", "content": d["text"]}, "finish_reason": d["finish"],
            **_ranking(d)}], **_usage(d)})

    @staticmethod
    def answer_stream(job: Job, first: tuple, base: dict, include_usage: bool):
        """Server-sent events from the job's first event (already taken from its queue) on."""
        from starlette.responses import StreamingResponse

        async def events():
            yield first
            while True:
                yield await job.events.get()

        async def sse():
            chunk = {**base, "object": "chat.completion.chunk"}
            try:
                yield _sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                  "finish_reason": None}]})
                async for ev in events():
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
                        yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": d["finish"],
                                                          **_ranking(d)}]})
                        if include_usage and _usage(d):
                            yield _sse({**chunk, "choices": [], **_usage(d)})
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


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

