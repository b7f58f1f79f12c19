"""No import cycles in ``src/plasma``: each module's runtime imports, read from its source.

An import under ``if TYPE_CHECKING:`` never runs, so it cannot close a cycle; an import inside
a function does run (later), so it counts. Importing ``a.b.c`` is an edge to ``a.b.c`` only, not
to the packages above it: a package importing its own submodules is not a cycle of design.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "plasma"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path, modules: set[str], *, name: str = "") -> set[str]:
    """The plasma modules ``path`` imports when it runs (module level or in a function)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text("utf-8"), str(path)))
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): runtime_imports(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_there_is_no_import_cycle() -> None:
    graph = import_graph()
    assert graph.get("plasma.server"), "the walk found no imports"
    assert [sorted(c) for c in cycles(graph)] == []


def test_the_walk_sees_cycles(tmp_path: Path) -> None:
    """The walk itself: lazy and relative imports count, ``TYPE_CHECKING`` ones do not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    module = SRC / "plasma" / "example.py"
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import hub\n"
        "if TYPE_CHECKING:\n"
        "    from plasma.server import Server\n"
        "def later():\n"
        "    from plasma.workers import run_workers\n"
    )
    path = tmp_path / "example.py"
    path.write_text(source)
    tree = {"plasma.hub", "plasma.server", "plasma.workers", "plasma.example"}
    assert runtime_imports(path, tree, name=module_name(module)) == {
        "plasma.hub",
        "plasma.workers",
    }
