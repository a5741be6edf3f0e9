"""The package's one logger. The CLI installs its stderr handler (cli._setup_logging);
a library user configures `logging` as they like.

Levels: INFO says what runs where (shown with -v); NOTICE is long work a user should know
is happening (a download, a conversion, the one-off timing of the encoder engines), shown
unless -q; WARNING and above print as `warning: ...`.
"""
from __future__ import annotations

import ctypes
import logging

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
log = logging.getLogger("mufun_local")
llama_log = logging.getLogger("mufun_local.llama_cpp")
_llama = {"callback": None, "line": "", "verbose": False, "errors": []}
GGML_LOG_LEVEL_ERROR = 4


def notice(msg: str) -> None:
    log.log(NOTICE, msg)


def route_llama_logs(verbose: bool) -> None:
    """llama.cpp's own log lines: dropped, or with `verbose` sent to the
    `mufun_local.llama_cpp` logger at DEBUG (the CLI's -v shows them); its error lines are
    kept either way (llama_errors), so a failure can say why in this package's one line.
    (llama-cpp-python's own callback prints WARN lines even when not verbose: it reads
    ggml's log levels in their old order.)"""
    import llama_cpp
    _llama["verbose"] = verbose
    if _llama["callback"] is not None:
        return

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        piece = (text or b"").decode("utf-8", "replace")
        if level == GGML_LOG_LEVEL_ERROR and piece.strip():
            _llama["errors"] = (_llama["errors"] + [piece.strip()])[-8:]
        if not _llama["verbose"]:
            return
        line = _llama["line"] + piece
        *whole, _llama["line"] = line.split("\n")
        for part in whole:
            if part.strip():
                llama_log.debug(part)
    _llama["callback"] = callback  # kept alive: llama.cpp holds the pointer
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def llama_errors(clear: bool = False) -> list[str]:
    """llama.cpp's error lines since the last clear (the last 8)."""
    errs = list(_llama["errors"])
    if clear:
        _llama["errors"] = []
    return errs
