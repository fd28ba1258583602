"""The observability pack: alert rules (promtool), scrape config, dashboard, and the metric names
they use all being metrics the code exports."""

from __future__ import annotations

import json
import re
import subprocess

from app.core import metrics
from tests.support.env import ROOT
from tests.support.system_tools import require

DEPLOY = ROOT / "deploy"
EXPORTED = {
    name
    for value in vars(metrics).values()
    if hasattr(value, "_name") and hasattr(value, "_type")
    for name in (value._name, f"{value._name}_total", f"{value._name}_bucket", f"{value._name}_count")
}


def metric_names(expression: str) -> set[str]:
    return set(
        re.findall(
            r"\b(?:(?:db|langgraph|http|tavily|outbox|roadmap_watchdog|data|retention)_[a-z_]+|task_events_dropped_total)\b",
            expression,
        )
    )


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require("promtool", "prometheus")
    return subprocess.run([binary, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_alert_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_and_dashboard_use_exported_metrics() -> None:
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "connection-pools.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = metric_names(rules) | set().union(*(metric_names(e) for e in expressions))
    assert used, "no metric names found"
    assert used <= EXPORTED, used - EXPORTED
    titles = " ".join(p["title"] for p in dashboard["panels"])
    for topic in ("Pool usage", "timeouts", "hold time p95", "against its allocation", "max_connections"):
        assert topic in titles
