"""The app's layers import downwards only: no cycle between modules or packages, function-local
imports included (they hide a cycle, they do not remove one). Pure: reads the source, needs no server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


@pytest.mark.parametrize("counted", [[], ["--type-checking"]])
def test_no_import_cycles(counted: list[str]) -> None:
    """Not even through a TYPE_CHECKING import: naming another module's type for the checker is a
    dependency too (settings <-> topology was one, until the plans moved to app.sizing)."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", *counted], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "module cycles: 0" in result.stdout and "package cycles: 0" in result.stdout


def test_the_topology_is_plain_data() -> None:
    import ast

    tree = ast.parse((SCRIPT.parents[1] / "backend" / "app" / "topology.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m == "app" or m.startswith("app.")], imported


def test_core_sits_below_db() -> None:
    """``core`` (Celery configuration, checkpointer factory, Redis, logging, metrics) is used by ``db``
    and must not use it back, nor anything above it."""
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True)
    core = next(line for line in result.stdout.splitlines() if line.strip().startswith("app.core ->"))
    allowed = {"app.config", "app.runtime", "app.sizing", "app.topology"}
    assert set(core.split("->")[1].replace(",", " ").split()) <= allowed


def readme_layers() -> list[str]:
    """The app's packages in the order the README's tree lists them, highest layer first."""
    readme = (SCRIPT.parents[1] / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(readme) if line.startswith("  app/ "))
    layers: list[str] = []
    for line in readme[start + 1 :]:
        if line.startswith("```"):
            break
        if line.startswith("    ") and not line.startswith("     "):
            entry = line.split()[0]
            name = "app." + entry.split("/")[0].removesuffix(".py")
            if name not in layers:
                layers.append(name)
    return layers


def test_every_package_imports_only_the_layers_the_readme_lists_below_it() -> None:
    """The README's tree is the layer order: each entry may import only the ones listed below it.
    Edges to a subpackage's __init__ count (``from app.tools.llm import RoadmapLLM`` uses tools)."""
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True)
    lines = result.stdout.split("package dependencies:\n", 1)[1].splitlines()
    edges = {src.strip(): set(dst.replace(",", " ").split()) for src, dst in (ln.split("->") for ln in lines)}
    layers = readme_layers()
    assert {"app.main", "app.api", "app.worker", "app.workflows", "app.tools", "app.topology"} <= set(layers)
    unplaced = (set(edges) | {d for ds in edges.values() for d in ds}) - set(layers)
    assert not unplaced, f"add to the README's tree: {unplaced}"
    upward = [(s, d) for s, ds in edges.items() for d in ds if layers.index(d) <= layers.index(s)]
    assert not upward, f"imports up (or sideways) the README's layer order: {upward}"
    assert "app.tools" in edges["app.workflows"]  # an edge to a package's __init__ is seen
