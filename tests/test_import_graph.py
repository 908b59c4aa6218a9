"""The package's import graph, read from the source tree: every internal import resolves to a file, no circles.

Function-level imports count (a circle hidden inside a function is still a circle),
and so do imports under `if TYPE_CHECKING:` (a circle that only type hints close is
still two modules that need each other). An import of a package
reaches its `__init__`; `from package import submodule` reaches the submodule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "layerprobe"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for the root package and its subpackages (core/, features/, pipeline/)."""
    modules = {PACKAGE: ROOT / "__init__.py"}
    for top in ("core", "features", "pipeline"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((PACKAGE, *parts))] = path
    return modules


def _imports(tree: ast.AST):
    """Every import statement anywhere in the file (inside functions and under `if TYPE_CHECKING:` too)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the internal modules it imports; and the internal imports that resolve to no file."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    unresolved = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != PACKAGE:
                    continue
                submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
                targets = submodules if len(submodules) == len(node.names) else [source, *submodules]
            for target in targets:
                if target in modules:
                    if target != name:
                        graph[name].add(target)
                else:
                    unresolved.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    return graph, unresolved


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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
    return found


def test_every_internal_import_resolves_to_a_file_in_the_tree():
    _, unresolved = _graph()
    assert unresolved == []


def test_no_module_imports_one_that_imports_it_back():
    graph, _ = _graph()
    assert _cycles(graph) == []


def _imports_out_of(source: str, allowed) -> list[str]:
    """The imports of modules under `source` whose target `allowed` refuses, as "module -> target"."""
    graph, _ = _graph()
    return sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.startswith(f"{PACKAGE}.{source}")
        for target in targets
        if not allowed(target)
    )


def test_core_imports_neither_features_nor_pipeline():
    assert _imports_out_of("core", lambda target: target.startswith(f"{PACKAGE}.core")) == []


def test_features_never_imports_pipeline():
    assert _imports_out_of("features", lambda target: not target.startswith(f"{PACKAGE}.pipeline")) == []


def test_the_checker_finds_a_function_level_circle(tmp_path, monkeypatch):
    """The check itself: a circle through an import inside a function or under TYPE_CHECKING is found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert _cycles(graph) == [["a", "b"]]
    tree = ast.parse("def f():\n    from .b import x\nif TYPE_CHECKING:\n    from .c import y\n")
    assert sorted(node.module for node in _imports(tree)) == ["b", "c"]


@pytest.mark.parametrize("core", ["errors", "checks", "atomic", "files", "lazy", "digests", "versions"])
def test_each_core_module_is_standalone_within_the_core(core):
    graph, _ = _graph()
    assert {t for t in graph[f"{PACKAGE}.core.{core}"] if not t.startswith(f"{PACKAGE}.core")} == set()
