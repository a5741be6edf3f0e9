"""Every dependency's telemetry off before it can start: importing mufun_local does this, so
every front door (the CLI, the server, batch and its Ray workers, library use) is covered.
A setting the user made stays as made.

- ONNX Runtime (1.32 on Linux/macOS) carries Microsoft's 1DS client: events, a device id and
  an offline cache (`$TMPDIR/.ses`). ORT_DISABLE_TELEMETRY=1, read when the runtime starts,
  creates none of it (`disable_telemetry_events()` alone keeps the essential events).
- OpenVINO's converter package, imported by `import openvino`, sends a Google Analytics event
  when no consent file exists. It has no variable; with its `openvino_telemetry` package
  unimportable it uses its own stub. Kept as is when the user opted in with OpenVINO's
  `opt_in_out --opt_in` (the consent file holds 1).
- Ray collects usage statistics unless RAY_USAGE_STATS_ENABLED=0.
- huggingface_hub adds telemetry headers to hub calls unless HF_HUB_DISABLE_TELEMETRY=1
  (the hub itself is contacted only by `pull` or an uncached hub id).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

VARIABLES = {
    "ORT_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def openvino_opted_in(home: Path | None = None) -> bool:
    try:
        first = (Path(home or Path.home()) / "intel" / "openvino_telemetry").read_text().splitlines()[:1]
    except (OSError, UnicodeDecodeError):
        return False
    return first == ["1"]


def telemetry_off(environ=None, modules=None, home: Path | None = None) -> None:
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    for name, value in VARIABLES.items():
        environ.setdefault(name, value)
    if "openvino_telemetry" not in modules and not openvino_opted_in(home):
        modules["openvino_telemetry"] = None  # `import openvino_telemetry` raises ImportError
