"""The package's layers, read from its source: every import (module level or inside a function)
goes down, never up; the converter and the runtime meet only in format/; no import circle; one
name per module. docs/architecture.md draws the same picture."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mufun_local"

# Each layer's rank (a module may import its own rank and lower) and its top-level names.
LAYERS = {
    "base": (0, {"errors", "logs", "timing", "progress", "offline", "diskspace", "devices", "paths", "files", "lru",
                 "tags"}),
    "format": (1, {"format"}),
    "generator": (2, {"synthetic"}),    # checkpoints in the original format and test songs
    "runtime": (2, {"audio", "encoder", "llm", "options", "pipeline", "chat"}),
    "converter": (2, {"convert"}),      # beside the runtime: they meet only in format/ (SEPARATE)
    "store": (3, {"store"}),            # resolves and converts models: runtime and converter
    "api": (4, {"model"}),
    "doors": (5, {"cli", "server", "batch", "__main__", "beetsplug"}),
}
LAYER_OF = {name: layer for layer, (_, names) in LAYERS.items() for name in names}
RANK = {name: LAYERS[layer][0] for name, layer in LAYER_OF.items()}
SEPARATE = {("runtime", "converter"), ("converter", "runtime")}


def modules() -> dict[str, Path]:
    """Dotted name -> file, for the package and the beets plugin."""
    out = {}
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "beetsplug").glob("*.py")]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports, anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name and t != "mufun_local":
                found.add(t)
    return found


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def top(name: str) -> str:
    parts = name.split(".")
    return parts[0] if parts[0] == "beetsplug" else (parts[1] if len(parts) > 1 else "")


def test_every_module_has_a_layer():
    assert not [m for m in MODULES if m != "mufun_local" and top(m) not in RANK]


def test_imports_go_down_and_converter_and_runtime_meet_only_in_format():
    wrong = []
    for m, deps in GRAPH.items():
        if m == "mufun_local":
            continue
        for d in deps:
            a, b = LAYER_OF[top(m)], LAYER_OF[top(d)]
            if RANK[top(d)] > RANK[top(m)] or (a, b) in SEPARATE:
                wrong.append(f"{m} ({a}) imports {d} ({b})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))
    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles


def test_devices_is_a_leaf():
    assert GRAPH["mufun_local.devices"] <= {"mufun_local.errors"}


def test_one_name_per_module():
    names = Counter(p.name for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not [n for n, k in names.items() if k > 1]


def test_the_test_sees_imports_inside_functions():
    """The walk is no stronger than its reading: a function-local import counts."""
    assert "mufun_local.convert.run" in GRAPH["mufun_local.store.models"]
