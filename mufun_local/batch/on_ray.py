"""`mufun-local batch --ray`: the same job as a Ray Data pipeline on a Ray cluster.

    files ──map (CPU tasks: decode, resample, log-mel)──> map_batches (actors: encoder + LLM)
          ──> JSON lines, written and flushed by this process as they arrive

Each actor holds one Pipeline (one GPU each when the cluster has GPUs and --device is not
cpu). Records are the ones `batch.answer_file` makes locally, so the output is the same
JSONL as a local run, in completion order; resume works the same way. Ray Data streams, so
only a few files' log-mels are in flight at once. The model directory and the audio paths
must be readable at the same paths on every node (a shared filesystem).
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Callable


from .local import Reading, Summary, answer_file, count, journal_lock, pending, prepare, record_line, settings_key
from ..errors import MufunError, first_line
from ..logs import log


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
        return ray
    except ImportError:
        raise MufunError("--ray needs Ray Data: pip install 'mufun-local[ray]'") from None


_PROXIES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def _start_private(ray, kwargs: dict) -> None:
    """Start a Ray of this machine's own that contacts nothing beyond loopback.

    - Ray finds a node's address by connecting a socket to 8.8.8.8 and then talks over the
      machine's network address; as on macOS and Windows, where Ray stays on loopback,
      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps it there (the constant is Ray's, read when it
      picks an address; the variable reaches the processes it starts).
    - Ray's dashboard process probes the cloud metadata services (169.254.169.254 and a DNS
      query for metadata.google.internal) even with usage statistics off. The processes
      ray.init starts get a proxy on a closed loopback port (loopback itself exempt), so that
      probe fails here; this process's own variables are restored afterwards. A proxy the
      user set is left alone."""
    import os
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in ("1", "true")
    saved = {k: os.environ.get(k) for k in (*_PROXIES, "no_proxy", "NO_PROXY")}
    if not any(saved[k] for k in _PROXIES):
        os.environ.update({k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy")},
                          no_proxy="127.0.0.1,localhost,::1")
    try:
        ray.init(**kwargs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def connect(address: str):
    """`local`: start a private Ray on this machine; `auto`: the cluster RAY_ADDRESS or
    `ray start` made; anything else: that address (host:port or ray://host:10001)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    kwargs = dict(include_dashboard=False, configure_logging=True, logging_level="ERROR", log_to_driver=False)
    try:
        if address == "local":
            _start_private(ray, kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = " (start one with `ray start --head`, or use --ray local)" if address == "auto" else ""
        raise MufunError(f"--ray {address}: cannot connect to a Ray cluster{hint}: "
                         f"{first_line(exc)}") from None
    res = ray.cluster_resources()
    log.info("ray: %d CPUs, %d GPUs", int(res.get("CPU", 0)), int(res.get("GPU", 0)))
    return ray


def _prepare_row(row: dict, filters, excerpt) -> dict:
    """CPU task: file -> the pickled prepare() result, windows as log-mels."""
    return {**row, "prepared": pickle.dumps(prepare(row["path"], filters, row["file"], excerpt), protocol=5)}


class _Answer:
    """Actor: one Model answering every question about each prepared file."""

    def __init__(self, model_dir: str, options, request, settings: str, reading: Reading):
        from dataclasses import asdict

        from ..format.model_dir import ModelDir
        from ..model import Caches, Model
        self.model = Model(ModelDir.open(model_dir), caches=Caches.for_batch(), **asdict(options))
        self.req, self.settings, self.reading = request, settings, reading

    def __call__(self, batch: dict) -> dict:
        lines = []
        for path, file, qs, blob in zip(batch["path"], batch["file"], batch["questions"], batch["prepared"]):
            recs = answer_file(self.model, self.req, str(path), [str(q) for q in qs], pickle.loads(blob), str(file),
                               self.settings, self.reading)
            lines.append("".join(map(record_line, recs)))
        return {"lines": lines}


def run_batch_ray(address: str, model, request, files: list[str], questions: list[str], out: Path,
                  progress: Callable[[int], object] | None = None, actors: int = 1,
                  reading: Reading = Reading()) -> Summary:
    """run_batch on a Ray cluster: each actor builds the same Model from `model`'s folder and options."""
    with journal_lock(out):
        return _run(address, model, request, files, questions, out, progress, actors, reading)


def _run(address, model, request, files, questions, out, progress, actors, reading) -> Summary:
    options = model.options
    settings = settings_key(model, request, reading)
    todo, skipped = pending(files, questions, out, settings)
    summary = Summary(skipped=skipped)
    if not todo:
        return summary
    ray = connect(address)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and options.device != "cpu" else 0
    # Ray sets OMP_NUM_THREADS to a worker's CPU count (1). OpenBLAS rounds float32 products
    # (the connector's) differently with another thread count, so workers get this process's
    # default, as a local run has: the same numbers, the same answers.
    cpus = int(ray.cluster_resources().get("CPU", 1))
    options = replace(options, threads=options.threads or max(1, cpus // max(1, actors)))
    env = {"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}}
    model_dir = model.path.resolve()  # workers need not share this process's directory
    filters = model.mel_filters
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"path": f, "file": os.path.abspath(f), "questions": qs} for f, qs in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(_prepare_row, fn_kwargs={"filters": filters, "excerpt": reading.excerpt}, num_cpus=1,
                runtime_env=env)
    request = replace(request, progress=None)  # a callback of this process does not travel to the actors
    ds = ds.map_batches(_Answer, fn_constructor_args=(str(model_dir), options, request, settings, reading),
                        batch_size=1,
                        concurrency=actors, num_gpus=gpus, num_cpus=0 if gpus else 1, runtime_env=env)
    with open(out, "a", encoding="utf-8") as fh:
        for row in ds.iter_rows():
            for line in row["lines"].split("\n")[:-1]:  # answers may hold U+2028 and the like
                fh.write(line + "\n")
                fh.flush()
                count(summary, json.loads(line))
                progress and progress(1)
    return summary
