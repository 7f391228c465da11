"""The module graph of ``convert`` and ``edge``: no import cycle, and the Pi side never imports the station side.

Parsed with ``ast`` (every import, including the ones inside functions), so a cycle hidden behind a
lazy import is found too: such a cycle is how ``evaluate`` and ``export`` ended up needing each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("convert", "edge")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name ``path`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``), absolute."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of ``convert`` / ``edge`` it imports."""
    mods = _modules()
    return {m: {n for n in _imported_names(p, m) if n in mods and n != m} for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_graph_sees_the_modules_and_their_imports():
    g = import_graph()
    assert {"convert.evaluate", "convert.export", "convert.loading", "convert.metrics", "edge.daemon"} <= set(g)
    assert {"convert.loading", "convert.metrics"} <= g["convert.export"]  # relative imports resolved
    assert "edge.errors" in g["convert.evaluate"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_edge_never_imports_convert():
    bad = {
        m: sorted(n for n in _imported_names(p, m) if n == "convert" or n.startswith("convert."))
        for m, p in _modules().items()
        if m.split(".")[0] == "edge"
    }
    assert {m: names for m, names in bad.items() if names} == {}
