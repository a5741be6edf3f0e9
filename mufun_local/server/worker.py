"""The server's queue: one worker thread owns the model (llama.cpp is not re-entrant per
context) and runs one job at a time, in arrival order, sending its events back to the
request's event loop; a client that goes away or a request past its deadline is stopped at
the next encoder window, prefill batch or token."""
from __future__ import annotations

import queue
import threading
import time

from ..errors import MufunError
from ..options import Request
from .task import Job, StopFilter


class Stopped(Exception):
    """Raised inside the model's work (at its next encoder window, prefill batch or token) when
    the client went away or the request ran past its deadline."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_job(job: Job) -> None:
    if job.cancel.is_set():
        raise Stopped(499, "the client went away")
    if time.monotonic() > job.deadline:
        raise Stopped(504, "the request took longer than the server's --request-timeout")


class Worker(threading.Thread):
    """Owns the model (a mufun_local.Model); runs one job at a time, in arrival order."""

    def __init__(self, model, max_queue: int):
        super().__init__(daemon=True, name="mufun-worker")
        self.model = model
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
                self.serve(job)
            except BaseException as exc:  # the thread must outlive any one request
                self._emit(job, "error", 500, f"internal error: {type(exc).__name__}")
            finally:
                self.busy = False

    def _public(self, job: Job, message: str) -> str:
        """An error message for the client: the server's own paths (the model directory) are
        not the client's business (its audio is named input_audio N already)."""
        return message.replace(str(self.model.path), "<model>")

    def _emit(self, job: Job, *event) -> None:
        job.loop.call_soon_threadsafe(job.events.put_nowait, event)

    def serve(self, job: Job) -> None:
        """Answer one job in this thread (the worker's loop calls it for each queued job)."""
        if job.cancel.is_set():
            return

        def progress(stage: str, done: int, total: int) -> None:
            check_job(job)  # stops the work between encoder windows, prefill batches, rounds and tokens
            if stage in ("encoder", "prefill", "rank"):  # the long stages, as SSE comments
                self._emit(job, "progress", stage, done, total)
        request = Request(job.max_tokens, job.sampling, progress=progress)
        try:
            done = self._rank(job, request) if job.rank is not None else self._generate(job, request)
        except Stopped as exc:
            self._emit(job, "error", exc.status, exc.message)
            return
        except MufunError as exc:
            self._emit(job, "error", 400, self._public(job, str(exc)))
            return
        except Exception as exc:  # never let one request take the worker down
            self._emit(job, "error", 500, self._public(job, f"internal error: {type(exc).__name__}: {exc}"))
            return
        self._emit(job, "done", done)

    def _generate(self, job: Job, request: Request) -> dict:
        """Stream the generated answer as delta events, up to a stop string; what "done" says."""
        stream = self.model.complete(job.prompt, job.audios, request=request)
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
                finish = "stop" if stream.result().stopped == "stop" else "length"
            tail = out.flush()
            if tail:
                self._emit(job, "delta", tail)
        finally:
            stream.close()
        usage = stream.usage()  # closed: what was made, up to a stop string
        return {"text": out.text, "finish": finish, "prompt_tokens": usage["prompt_tokens"] + usage["audio_tokens"],
                "completion_tokens": usage["completion_tokens"]}

    def _rank(self, job: Job, request: Request) -> dict:
        """The `rank` extension: the most likely term as the answer, every term's probability."""
        ranked = self.model.rank(job.audios, job.prompt, list(job.rank), request=request)
        self._emit(job, "start")
        self._emit(job, "delta", ranked[0][0])
        return {"text": ranked[0][0], "finish": "stop", "ranking": ranked}
