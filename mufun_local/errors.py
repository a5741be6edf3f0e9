"""The one exception type a user sees: its message is printed as one line by the CLI."""


class MufunError(Exception):
    """An expected failure (bad input, missing model file, ...) with a user-facing message."""


class AudioError(MufunError):
    """A file that cannot be turned into audio windows."""


class ModelError(MufunError):
    """A model directory or file that is missing, truncated or inconsistent."""
