"""The budget: the guide's tables from the code, the start-up guard, the live audit."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import httpx
import pytest
import structlog

from app.budget.__main__ import render, settings_for
from app.budget.audit import run_audit
from app.budget.guard import CHECKED_MARKER, enforce_budget
from app.budget.model import budget_from_settings, suggest
from app.config.settings import InvalidSettingsError, Settings, get_settings
from app.db.engine import get_engine
from app.db.session import safe_session
from tests.conftest import auth

BACKEND = Path(__file__).resolve().parents[1] / "backend"


@pytest.mark.parametrize(
    ("environment", "theoretical", "peak", "total", "allocation", "worst"),
    [("development", 147, 88, 108, 120, 176), ("production", 350, 210, 250, 280, 460)],
)
def test_tables_reproduce_the_guide(
    environment: str, theoretical: int, peak: int, total: int, allocation: int, worst: int
) -> None:
    budget = budget_from_settings(settings_for(environment))
    assert budget.sqlalchemy_theoretical == theoretical
    assert budget.estimated_peak == peak
    assert budget.guide_total == total
    assert budget.allocation == allocation
    assert budget.worst_case == worst and budget.overrun == worst - allocation
    text = render(budget)
    assert f"| SQLAlchemy theoretical max | {35 if environment == 'production' else 21} |" in text
    assert f"**{total} < {allocation}**" in text
    assert f"**over by {worst - allocation}**" in text


def test_cli_prints_the_tables(subprocess_env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app.budget", "--environment", "production"],
        cwd=BACKEND, env=subprocess_env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "| Celery `content_generation` (1 parent + 10 children) | 11 | 10 | 110 |" in out
    assert "350 + 20 + 20 = 390" in out and "460" in out


def production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields and k != CHECKED_MARKER}
    return {**env, "LOG_FORMAT": "console", **extra}


def test_strict_refuses_the_production_defaults() -> None:
    env = production_env(DB_BUDGET_ENFORCEMENT="strict")
    for command in (["-m", "app.budget", "--guard", "--service", "api"], ["-c", "import app.main"]):
        result = subprocess.run(
            [sys.executable, *command], cwd=BACKEND, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1
        assert lines[0].startswith("connection budget exceeded: worst case 460 > DB_CONNECTION_BUDGET 280")
        for variable in ("UVICORN_WORKERS", "DB_POOL_SIZE", "DB_MAX_OVERFLOW", "LANGGRAPH_POOL_MAX_SIZE"):
            assert variable in lines[0]


def test_suggestion_fits_and_passes_strict() -> None:
    found = suggest(settings_for("production"))
    assert found is not None and found.worst_case <= 280
    env = production_env(DB_BUDGET_ENFORCEMENT="strict", **{k: str(v) for k, v in found.env().items()})
    result = subprocess.run(
        [sys.executable, "-m", "app.budget", "--guard"], cwd=BACKEND, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_warn_logs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHECKED_MARKER, raising=False)
    settings = settings_for("production").model_copy(update={"DB_BUDGET_ENFORCEMENT": "warn"})
    with structlog.testing.capture_logs() as logs:
        enforce_budget(settings, "api")
        enforce_budget(settings, "api")
    warned = [e for e in logs if e["event"] == "db_budget_exceeded"]
    assert len(warned) == 1
    assert warned[0]["worst_case"] == 460 and warned[0]["over_by"] == 180
    monkeypatch.delenv(CHECKED_MARKER, raising=False)
    with pytest.raises(InvalidSettingsError):
        enforce_budget(settings.model_copy(update={"DB_BUDGET_ENFORCEMENT": "strict"}), "api")


async def server_count(pg: asyncpg.Connection, name: str) -> int:
    return await pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name)


async def test_audit_counts_equal_pg_stat_activity(pg: asyncpg.Connection) -> None:
    from app.core.orchestrator_factory import OrchestratorFactory

    settings = get_settings()
    await OrchestratorFactory.get_pool("celery_workflow")  # min_size 1: one checkpointer connection
    async with AsyncExitStack() as stack:
        for _ in range(2):
            conn = await stack.enter_async_context(get_engine().connect())
            await conn.exec_driver_sql("SELECT 1")
        async with safe_session() as session:
            audit = await run_audit(session, settings)
            api = await server_count(pg, "test.api")
            graph = await server_count(pg, "test.celery_workflow.langgraph")
    by_service = {s.service: s for s in audit.services}
    assert by_service["api"].sqlalchemy == api == 3  # 2 held + the audit's own session
    assert by_service["celery_workflow"].langgraph == graph >= 1
    assert by_service["api"].budget == budget_from_settings(settings).service("api").real_total
    assert audit.environment_total == sum(s.total for s in audit.services)
    assert any(row["application_name"] == "test.api" for row in audit.rows)


async def test_admin_connections_route_and_server_gauges(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/admin/connections", headers=auth("user"))).status_code == 403
    response = await client.get("/api/v1/admin/connections", headers=auth("admin"))
    assert response.status_code == 200
    body = response.json()
    assert body["allocation"] == 120 and body["environment"] == "test"
    api = next(s for s in body["services"] if s["service"] == "api")
    assert api["sqlalchemy"] >= 1 and api["within_budget"] is True
    text = (await client.get("/metrics")).text
    assert 'db_server_connections{service="api"}' in text
    assert "db_connection_allocation 120.0" in text


def test_guard_is_quiet_when_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHECKED_MARKER, raising=False)
    found = suggest(settings_for("production"))
    assert found is not None
    settings = settings_for("production").model_copy(
        update={**found.env(), "DB_BUDGET_ENFORCEMENT": "strict"}
    )
    with structlog.testing.capture_logs() as logs:
        enforce_budget(settings, "api")
    assert logs == []


def test_the_english_guide_shows_the_tables_the_code_computes(subprocess_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(BACKEND.parent / "scripts" / "update_docs_budget.py"), "--check"],
        env=subprocess_env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = (BACKEND.parent / "docs" / "connection-pool-guide.md").read_text()
    assert "**250 < 280**" in doc and "**108 < 120**" in doc and "**460**" in doc
