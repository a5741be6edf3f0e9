"""mufun-local: the MuFun music-understanding model, offline, on a laptop CPU or a consumer GPU."""

__version__ = "0.1.0"
