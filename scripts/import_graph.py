"""The import graph of ``backend/app``: its cycles, and the packages each package imports.

Every ``import`` counts, at module level or inside a function (a function-local import hides a cycle,
it does not remove one); ``if TYPE_CHECKING:`` blocks are left out, since they never run, unless
``--type-checking`` asks for them: a module that names another's type for the checker only still
depends on it, and a circle through such an import is a design circle even if it never fails to import.

    python scripts/import_graph.py                   # cycles (modules), then package dependencies
    python scripts/import_graph.py --check           # exit 1 if there is a cycle between modules or packages
    python scripts/import_graph.py --type-checking   # count TYPE_CHECKING imports too
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "backend"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, package: str, is_package: bool, type_checking: bool = False) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - (1 if is_package else 0))]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph(type_checking: bool = False) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (ROOT / "app").rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets = _imports(ast.parse(path.read_text()), package, is_package, type_checking)
        # "from app.x import y" names module app.x.y when it exists, else an attribute of app.x.
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                connect(nxt)
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

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or module in _PACKAGES else module


_PACKAGES: set[str] = set()


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    _PACKAGES.update(m for m in edges if (ROOT / Path(*m.split("."))).is_dir())
    result: dict[str, set[str]] = defaultdict(set)
    for source, targets in edges.items():
        for target in targets:
            a, b = package_of(source), package_of(target)
            # ``from app import x`` names the root package as well as app.x: the root is no layer. A
            # subpackage's __init__ is (``from app.tools.llm import RoadmapLLM`` uses tools).
            if a != b and target != "app":
                result[a].add(b)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on any cycle")
    parser.add_argument("--type-checking", action="store_true", help="count TYPE_CHECKING imports too")
    args = parser.parse_args()
    edges = graph(args.type_checking)
    module_cycles = cycles(edges)
    packages = package_edges(edges)
    package_cycles = cycles(packages)
    print(f"modules: {len(edges)}, imports: {sum(len(t) for t in edges.values())}")
    print(f"module cycles: {len(module_cycles)}")
    for component in module_cycles:
        print("  " + " <-> ".join(component))
    print(f"package cycles: {len(package_cycles)}")
    for component in package_cycles:
        print("  " + " <-> ".join(component))
    print("package dependencies:")
    for package in sorted(packages):
        print(f"  {package} -> {', '.join(sorted(packages[package]))}")
    return 1 if args.check and (module_cycles or package_cycles) else 0


if __name__ == "__main__":
    raise SystemExit(main())
