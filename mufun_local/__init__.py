"""mufun-local: the MuFun music-understanding model, offline, on a laptop CPU or a consumer GPU.

    from mufun_local import Model
    with Model("Yi3852/MuFun-Base") as model:
        print(model.ask("song.flac", "What genre is this?").text())

docs/python.md has the rest.
"""

from .offline import telemetry_off as _telemetry_off

__version__ = "0.1.0"
_telemetry_off()  # before any dependency is imported (mufun_local.offline says what and why)

# The API, imported when first named (the command line starts without it)
_API = {
    "Model": "model", "Caches": "model",
    "Answer": "pipeline", "Result": "pipeline",
    "AudioInput": "encoder.embedder", "Embedded": "encoder.embedder",
    "Options": "options", "Request": "options",
    "MufunError": "errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
