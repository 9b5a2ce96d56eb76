"""The package layout holds: no import cycle between edgeface modules (imports inside functions
count), nothing at run time imports the build-time `convert` package or the `eval` package, and the
stage packages import only downwards (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgeface"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the edgeface modules it imports anywhere in its file (in functions too). `from pkg import
    name` counts as importing pkg.name when that is a module, else pkg; a package's parents are not counted
    (importing edgeface.vision.align runs edgeface/vision/__init__.py, which must stay import-free)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.startswith("edgeface"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeface") and not node.level:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name and t != "edgeface"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    graph = import_graph()
    assert len(graph) > 40 and any(graph.values())
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


LAYERS = ["edgeface.errors", "edgeface.text", "edgeface.config", "edgeface.io", "edgeface.vision", "edgeface.events",
          "edgeface.bus", "edgeface.recognition", "edgeface.storage", "edgeface.pipeline", "edgeface.service",
          "edgeface.eval", "edgeface.cli"]
"""Lower first: a module imports only from its own layer and the layers before it (convert: build time only)."""


def _layer(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    return None


def test_stage_packages_import_only_downwards() -> None:
    wrong = []
    for module, targets in import_graph().items():
        mine = _layer(module)
        for target in targets:
            theirs = _layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_run_time_code_never_imports_convert_or_eval() -> None:
    graph = import_graph()
    for start in ("edgeface.cli.run", "edgeface.service.app", "edgeface.pipeline"):
        reached = _reachable(graph, start)
        assert not {m for m in reached if m.startswith(("edgeface.convert", "edgeface.eval"))}, start
