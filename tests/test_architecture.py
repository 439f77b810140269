"""The shape of server/ stays what docs/architecture.md says (issue 14): checked, not hoped for.

* no import cycle between modules of tidings.server, type-only imports included;
* uvicorn is imported only by server/transport/ (the one place to re-check on an upgrade);
* no module over 500 lines, no function over 60 lines without a comment saying why;
* every module is named in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "server"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SERVER.rglob("*.py")):
        parts = ["tidings", "server", *path.relative_to(SERVER).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The tidings.server modules ``path`` imports, wherever the import stands (TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import (server/ uses absolute ones)"
            for name in (node.module, *(f"{node.module}.{alias.name}" for alias in node.names)):
                if name in known:
                    found.add(name)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_type_only_ones_included() -> None:
    known = modules()
    graph = {name: imports_of(path, known) - {name} for name, path in known.items()}
    # A package's __init__ may re-export its modules; a module importing its own package is no cycle.
    for name in graph:
        graph[name] = {target for target in graph[name] if not name.startswith(target + ".")}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_uvicorn_is_imported_only_by_the_transport_package() -> None:
    importers = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(n == "uvicorn" or n.startswith("uvicorn.") for n in names):
                importers.append(name)
    assert importers and all(name.startswith("tidings.server.transport.") for name in importers), importers


def test_no_module_over_500_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: size for name, size in sizes.items() if size > MAX_MODULE_LINES} == {}


def test_no_function_over_60_lines_without_a_reason() -> None:
    """A longer function says why in a comment starting ``# Long:`` among its first lines."""
    unexplained = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                head = lines[node.lineno - 1 : node.lineno + 12]
                if length > MAX_FUNCTION_LINES and not any("# Long:" in line for line in head):
                    unexplained.append(f"{name}.{node.name} ({length} lines)")
    assert unexplained == []


def test_every_module_is_named_in_the_architecture_document() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        str(path.relative_to(ROOT))
        for path in modules().values()
        if path.name != "__init__.py" and str(path.relative_to(ROOT)) not in text
    ]
    assert missing == []
