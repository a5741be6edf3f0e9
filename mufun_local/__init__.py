"""mufun-local: the MuFun music-understanding model, offline, on a laptop CPU or a consumer GPU."""

from .offline import telemetry_off as _telemetry_off

__version__ = "0.1.0"
_telemetry_off()  # before any dependency is imported (mufun_local.offline says what and why)
