"""The CI-sized load run: the production topology (8 uvicorn workers, Celery 8 / 10 / 6, production
pool sizes) on a private PostgreSQL with max_connections=400, under rising load. Fails when any
service's peak server connections exceed its budget, or the total exceeds the allocation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import ROOT
from tests.support.system_tools import require

pytestmark = pytest.mark.slow


def test_ci_load_profile_stays_within_the_budget(tmp_path: Path, standalone_env: dict[str, str]) -> None:
    require("wrk", "wrk")  # the harness's load generator
    harness = ROOT / "scripts" / "load_harness.py"
    result = subprocess.run(
        [sys.executable, str(harness), "--profile", "ci", "--out", str(tmp_path)],
        cwd=ROOT, env=standalone_env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    data = json.loads((tmp_path / "load-ci.json").read_text())
    peaks, budgets = data["peak_server_connections"], data["budgets"]
    for service, budget in budgets.items():
        assert 0 <= peaks[service] <= budget, (service, peaks[service], budget)
    assert peaks["api"] >= 1 and peaks["celery_content"] >= 1  # the run really reached the database
    assert peaks["total"] <= data["allocation"]
    assert data["responses_5xx_other"] == 0 and data["transport_errors"] == 0
    assert data["roadmaps"]["created"] > 0
    assert data["roadmaps"].get("completed", 0) == data["roadmaps"]["created"]
    assert len(data["timeline"]) > 50  # sampled every 100 ms throughout
    assert all("generator_cpu" in stage for stage in data["stages"])  # reported, not judged here
    assert (tmp_path / "load-ci.png").stat().st_size > 10_000
