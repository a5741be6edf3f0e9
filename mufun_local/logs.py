"""The package's one logger. The CLI installs its stderr handler (cli._setup_logging);
a library user configures `logging` as they like.

Levels: INFO says what runs where (shown with -v); NOTICE is long work a user should know
is happening (a download, a conversion, the one-off timing of the encoder engines), shown
unless -q; WARNING and above print as `warning: ...`.
"""
from __future__ import annotations

import logging

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
log = logging.getLogger("mufun_local")


def notice(msg: str) -> None:
    log.log(NOTICE, msg)
