"""The app's layers import downwards only: no cycle between modules or packages, function-local
imports included (they hide a cycle, they do not remove one). Pure: reads the source, needs no server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


def test_no_import_cycles() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "module cycles: 0" in result.stdout and "package cycles: 0" in result.stdout


def test_core_sits_below_db() -> None:
    """``core`` (Celery configuration, checkpointer factory, Redis, logging, metrics) is used by ``db``
    and must not use it back, nor anything above it."""
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True)
    core = next(line for line in result.stdout.splitlines() if line.strip().startswith("app.core ->"))
    assert set(core.split("->")[1].replace(",", " ").split()) <= {"app.config", "app.runtime", "app.topology"}
