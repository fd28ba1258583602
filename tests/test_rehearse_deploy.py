"""The deploy rehearsal, briefly: the four services from the Railway graph behind HAProxy, the API
redeployed once (overlap 1 s, draining 3 s) under wrk reads and roadmap POSTs, pg_stat_activity
sampled throughout. It checks the rehearsal's mechanics and the invariants that hold whatever the
API does on SIGTERM: every accepted roadmap completes exactly once, and no peak passes its budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import ROOT
from tests.support.system_tools import require

pytestmark = pytest.mark.slow


def test_one_api_redeploy_is_rehearsed_within_the_budget(
    tmp_path: Path, standalone_env: dict[str, str]
) -> None:
    require("wrk", "wrk")
    require("haproxy", "haproxy")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "rehearse_deploy.py"), "--services", "api", "--no-all",
         "--overlap", "1", "--drain", "3", "--duration", "short",
         "--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "r.png")],
        cwd=ROOT, env=standalone_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # 1 is a verdict (a request failed, a figure was passed), 2+ a crash
    assert result.returncode in (0, 1), result.stdout[-4000:] + result.stderr[-4000:]
    data = json.loads((tmp_path / "r.json").read_text())
    window, summary = data["window"], data["summary"]

    (phase,) = [p for p in data["phases"] if p["name"] == "api"]
    (step,) = phase["steps"]
    assert step["live"] is not None and step["old"] is not None  # a new API served, the old one ...
    assert step["sigterm"] - step["live"] >= 1  # ... overlapped it for overlapSeconds, then got SIGTERM
    assert step["gone"] - step["sigterm"] <= 3 + 1  # and was gone by drainingSeconds (+ a poll)

    assert data["samples_per_second"] >= 10
    assert max(p["api"] for p in data["timeline"]) >= 1  # the API's connections were seen
    assert phase["peak"] <= window["per_service"]["api"] <= window["allocation"]
    assert summary["steady_peak"] <= window["steady"]

    assert sum(n for s, n in summary["wrk"].items() if int(s) == 200) > 0
    roadmaps = data["roadmaps"]
    assert roadmaps["accepted"] > 1
    assert roadmaps["completed_exactly_once"] == roadmaps["accepted"]
    assert roadmaps["concepts_written_once"] == roadmaps["concepts"] > 0
    assert (tmp_path / "r.png").stat().st_size > 10_000
