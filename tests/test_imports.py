"""The package's import graph: no cycles between its subpackages and top-level modules, and the
library never imports the research harness, the benchmarks, the scripts or the tests."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "captioner"
OUTSIDE = ("research", "benchmarks", "scripts", "tests")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """A subpackage or a top-level module: captioner.data.sources -> captioner.data, captioner.train ->
    captioner.train (the package's own __init__ is `captioner`)."""
    return ".".join(module.split(".")[:2])


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "captioner":  # from captioner import distributed -> captioner.distributed
                found.update(f"captioner.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(_module_name(path))
        targets = {_unit(m) for m in _imports(path) if m.startswith("captioner.")}
        graph.setdefault(unit, set()).update(t for t in targets if t != unit)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if state.get(target) is None:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles_between_subpackages_and_modules():
    graph = _graph()
    assert {"captioner.data", "captioner.models", "captioner.metrics", "captioner.train"} <= set(graph)
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_research_benchmarks_scripts_or_tests():
    offenders = {str(path.relative_to(PACKAGE.parent)): sorted(m for m in _imports(path) if m.split(".")[0] in OUTSIDE)
                 for path in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
