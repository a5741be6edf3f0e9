"""The `mufun-local` command line: the commands (commands.py), the flags they share
(flags.py), the chat loop (chat.py) and the demo (demo.py)."""
from .commands import cli, main  # noqa: F401
