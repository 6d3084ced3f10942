"""No import cycles in dittohead's own modules, not even ones broken by a function-level import.

The graph is built from the source with `ast`, over every module under the three source roots
(``core``, ``client``, ``receiver``), counting every import wherever it is written: at the top,
inside a function, or under ``if TYPE_CHECKING:``. A cycle that only works because one side
imports late is still a cycle: the two modules cannot be understood, tested or loaded one
without the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("core", "client", "receiver")


def _modules() -> dict[str, Path]:
    """Every module of the three roots by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for root in ROOTS:
        base = REPO / root
        for path in sorted((base / "dittohead").rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The modules of `modules` that `name` (at `path`) imports, wherever the import is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            # `from package import module` imports the module; `from module import name` it.
            targets = [f"{source}.{alias.name}" for alias in node.names] + [source]
        else:
            continue
        for target in targets:
            known = target
            while known and known not in modules:
                known = known.rpartition(".")[0]
            if known and known != name:
                yield known


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set(_imported(name, path, modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _cycles_in(root: str) -> list[list[str]]:
    prefix = f"dittohead.{root}"
    return [c for c in _cycles(_graph()) if any(m.split(".")[:2] == prefix.split(".") for m in c)]


def test_the_graph_sees_every_root_and_late_imports() -> None:
    graph = _graph()
    for root in ROOTS:
        assert any(name.startswith(f"dittohead.{root}.") for name in graph), root
    # a made-up cycle through a function-level import is found
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


@pytest.mark.parametrize("root", ROOTS)
def test_no_import_cycles(root: str) -> None:
    assert _cycles_in(root) == []


def test_core_imports_neither_client_nor_receiver() -> None:
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith("dittohead.core"):
            assert [t for t in targets if not t.startswith("dittohead.core")] == [], name
        if name.startswith("dittohead.client"):
            assert [t for t in targets if t.startswith("dittohead.receiver")] == [], name
