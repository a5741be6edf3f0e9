"""The one exception type a user sees: its message is printed as one line by the CLI."""


class MufunError(Exception):
    """An expected failure (bad input, missing model file, ...) with a user-facing message."""


class AudioError(MufunError):
    """A file that cannot be turned into audio windows."""


class ModelError(MufunError):
    """A model directory or file that is missing, truncated or inconsistent."""


def first_line(cause: BaseException | str, limit: int = 200) -> str:
    """An exception's message (or a text) as one line: its first, cut to `limit`; the
    exception's type when it says nothing. Engines' errors can run to pages."""
    text = cause if isinstance(cause, str) else str(cause)
    text = text.strip()
    if not text:
        return type(cause).__name__ if isinstance(cause, BaseException) else ""
    return text.splitlines()[0][:limit]
