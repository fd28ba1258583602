"""The budget: the guide's tables from the code, the start-up guard, the live audit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from app import topology
from app.budget.__main__ import render, settings_for
from app.budget.audit import run_audit
from app.budget.guard import enforce_budget
from app.budget.model import budget_from_settings, guide_processes, suggest
from app.config.loading import InvalidSettingsError
from app.config.settings import Settings, get_settings
from app.db.engine import get_engine
from app.db.session import safe_session
from tests.support.auth import auth
from tests.support.env import ADMIN_URL, BACKEND, TEST_DB


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
    assert budget.worst_case == worst
    # the deploy window planned for by default: one service (the largest) redeploying beside its old self
    largest = max(s.max_connections for s in budget.services)
    assert budget.deploy.worst_case == worst + largest
    assert budget.overrun == worst + largest - allocation
    text = render(budget)
    assert f"| SQLAlchemy theoretical max | {35 if environment == 'production' else 21} |" in text
    assert f"**{total} < {allocation}**" in text
    assert f"**over by {worst - allocation}**" in text


def test_cli_prints_the_tables(standalone_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.budget", "--environment", "production"],
        cwd=BACKEND, env=standalone_env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1  # the guide's production topology does not fit: a deploy gate fails
    out = result.stdout
    assert "| Celery `content_generation` (1 parent + 10 children) | 11 | 10 | 110 |" in out
    assert "350 + 20 + 20 = 390" in out and "460" in out


def budget_json(standalone_env: dict[str, str], *args: str) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "app.budget", "--json", *args],
        cwd=BACKEND, env=standalone_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout)


def test_json_is_a_deploy_gate(standalone_env: dict[str, str]) -> None:
    status, body = budget_json(standalone_env, "--environment", "production")
    assert status == 1 and body["fits"] is False
    assert (body["environment"], body["allocation"], body["worst_case"]) == ("production", 280, 460)
    workflow = next(s for s in body["services"] if s["service"] == "celery_workflow")
    wanted = {"replicas": 1, "processes": 6, "per_process": 10, "langgraph": 20, "max_connections": 180}
    assert {k: workflow[k] for k in wanted} == wanted
    assert [s["service"] for s in body["services"]] == list(topology.NAMES)
    found = suggest(settings_for("production"))
    sets = [arg for name, value in found.env().items() for arg in ("--set", f"{name}={value}")]
    status, body = budget_json(standalone_env, "--environment", "production", *sets)
    assert status == 0 and body["fits"] is True and body["worst_case"] == found.worst_case


def test_replicas_multiply_a_service_share() -> None:
    one = budget_from_settings(settings_for("production"))
    three = budget_from_settings(settings_for("production", {"API_REPLICAS": "3"}))
    assert three.service("api").max_connections == 3 * one.service("api").max_connections == 240
    assert three.worst_case == one.worst_case + 160
    # the guide's way of counting scales the same way: 3 x 8 uvicorn workers, and 2 x (1 + 10) processes
    two = budget_from_settings(settings_for("production", {"CELERY_CONTENT_REPLICAS": "2"}))
    assert guide_processes(two.service("celery_content")) == 22
    assert two.service("celery_content").total_processes == 20


def test_per_service_pools_fall_back_to_the_shared_ones() -> None:
    budget = budget_from_settings(
        settings_for("production", {"CELERY_LOGS_DB_POOL_SIZE": "1", "CELERY_LOGS_DB_MAX_OVERFLOW": "0"})
    )
    assert budget.service("celery_logs").per_process == 1
    assert budget.service("api").per_process == 10
    assert budget.worst_case == 460 - 8 * 9


@pytest.mark.parametrize(
    "replicas", [{}, {"API_REPLICAS": "2"}, {"API_REPLICAS": "3", "CELERY_CONTENT_REPLICAS": "2"}]
)
def test_suggestion_fits_with_replicas(replicas: dict[str, str]) -> None:
    settings = settings_for("production", replicas)
    found = suggest(settings)
    assert found.fits and found.worst_case <= 280
    applied = settings_for("production", {**replicas, **{k: str(v) for k, v in found.env().items()}})
    budget = budget_from_settings(applied)
    assert budget.fits and budget.worst_case == found.worst_case
    by_name = {s.service: s.plan for s in found.services}
    # one task at a time needs one session; the checkpointer one graph's worth
    assert by_name["celery_logs"].pool.max_connections == 2
    assert by_name["celery_workflow"].langgraph_max_size == 2
    assert by_name["api"].pool.max_connections >= by_name["celery_logs"].pool.max_connections
    assert all(s.reason for s in found.services)


def test_suggestion_names_the_replica_count_to_lower() -> None:
    settings = settings_for("production", {"API_REPLICAS": "20"})
    found = suggest(settings)
    assert not found.fits and found.advice is not None
    assert found.advice.startswith("lower API_REPLICAS from 20 to ")
    lowered = found.advice.rsplit(" ", 1)[1]
    assert suggest(settings_for("production", {"API_REPLICAS": lowered})).fits
    assert not suggest(settings_for("production", {"API_REPLICAS": str(int(lowered) + 1)})).fits


def production_env(**extra: str) -> dict[str, str]:
    """The production defaults against a database that does not answer (the server's limits unknown)."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    return {**env, "LOG_FORMAT": "console", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", **extra}


def test_strict_refuses_the_production_defaults() -> None:
    env = production_env(DB_BUDGET_ENFORCEMENT="strict")
    # Importing the module reads no settings; asking for the app (what uvicorn does) builds it.
    imported = subprocess.run(
        [sys.executable, "-c", "import app.main"], cwd=BACKEND, env=env, capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stderr
    api = "from app.main import app"
    for command in (["-m", "app.budget", "--guard", "--service", "api"], ["-c", api]):
        result = subprocess.run(
            [sys.executable, *command], cwd=BACKEND, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("connection budget")]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(
            "connection budget exceeded: worst case 640 while celery_workflow redeploying "
            "(DB_BUDGET_DEPLOY_CASE=one_service; steady 460) > DB_CONNECTION_BUDGET 280"
        )
        for variable in ("UVICORN_WORKERS", "API_REPLICAS", "DB_POOL_SIZE", "LANGGRAPH_POOL_MAX_SIZE"):
            assert variable in lines[0]
        assert "Traceback" not in result.stderr
    # The entrypoint ran the guard already (DB_BUDGET_CHECKED): the processes it starts trust it.
    trusted = subprocess.run(
        [sys.executable, "-c", api], cwd=BACKEND, env={**env, "DB_BUDGET_CHECKED": "true"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert trusted.returncode == 0, trusted.stderr


def test_suggestion_fits_and_passes_strict() -> None:
    found = suggest(settings_for("production"))
    assert found.fits and found.worst_case <= 280
    env = production_env(DB_BUDGET_ENFORCEMENT="strict", **{k: str(v) for k, v in found.env().items()})
    result = subprocess.run(
        [sys.executable, "-m", "app.budget", "--guard"], cwd=BACKEND, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_warn_logs_and_strict_refuses() -> None:
    settings = settings_for("production").model_copy(update={"DB_BUDGET_ENFORCEMENT": "warn"})
    with structlog.testing.capture_logs() as logs:
        enforce_budget(settings, "api", read_server=False)
    warned = [e for e in logs if e["event"] == "db_budget_exceeded"]
    assert len(warned) == 1
    assert warned[0]["worst_case"] == 460 and warned[0]["deploy_worst_case"] == 640
    assert warned[0]["over_by"] == 640 - 280
    with pytest.raises(InvalidSettingsError):
        enforce_budget(
            settings.model_copy(update={"DB_BUDGET_ENFORCEMENT": "strict"}), "api", read_server=False
        )


async def server_count(pg: asyncpg.Connection, name: str) -> int:
    """Connections named ``name`` to this run's database (another run on the server has its own)."""
    return await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = $2", name, TEST_DB
    )


async def test_audit_counts_equal_pg_stat_activity(pg: asyncpg.Connection) -> None:
    from app.core.orchestrator_factory import OrchestratorFactory

    settings = get_settings()
    async with AsyncExitStack() as stack:
        # A workflow worker's checkpointer pool beside this (API) process's engine: min_size 1.
        checkpointer = await OrchestratorFactory(settings, "celery_workflow").open()
        stack.push_async_callback(checkpointer.close)
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
    assert by_service["api"].budget == budget_from_settings(settings).service("api").max_connections
    assert audit.charged == sum(s.total for s in audit.services) + audit.other
    assert audit.database == get_settings().POSTGRES_DB or audit.database.startswith("test_")
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
    assert 'db_server_connections{environment="test",service="api"}' in text
    assert 'db_connection_allocation{environment="test"} 120.0' in text


@pytest.fixture
async def other_environment(pg: asyncpg.Connection) -> AsyncIterator[tuple[str, list[asyncpg.Connection]]]:
    """Another environment on the same instance: its own database, its services' application_names."""
    name = f"other_env_{uuid.uuid4().hex[:8]}"
    await pg.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    conns = [
        await asyncpg.connect(url, server_settings={"application_name": app})
        for app in ["development.api"] * 5 + ["development.celery_content"] * 2
    ]
    try:
        yield name, conns
    finally:
        for conn in conns:
            await conn.close()
        await pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_audit_charges_only_its_own_database(
    other_environment: tuple[str, list[asyncpg.Connection]],
    pg: asyncpg.Connection,
    test_db_name: str,
    subprocess_env: dict[str, str],
) -> None:
    other_db, _ = other_environment
    settings = get_settings()
    async with safe_session() as session:
        audit = await run_audit(session, settings)
        own = await pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", test_db_name)
    assert audit.database == test_db_name
    assert audit.charged == own  # every connection to this database, and nothing else
    assert sum(e["count"] for e in audit.elsewhere if e["datname"] == other_db) == 7
    assert {"datname": other_db, "application_name": "development.api", "count": 5} in audit.elsewhere
    envs = {e.environment: e for e in audit.environments}
    assert envs["development"].used >= 7 and envs["development"].allocation == 120
    assert envs["production"].allocation == 280 and envs["test"].allocation == settings.DB_CONNECTION_BUDGET
    assert audit.allocations_total == sum(e.allocation for e in audit.environments)
    limits = await pg.fetchrow("SELECT current_setting('max_connections')::int AS m, "
                               "current_setting('superuser_reserved_connections')::int AS r")  # fmt: skip
    assert (audit.server.max_connections, audit.server.superuser_reserved_connections) == tuple(limits)

    # the CLI's machine-readable audit says the same
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "app.budget", "--audit", "--json"],
        cwd=BACKEND, env=subprocess_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    for key in ("environment", "database", "allocation", "charged", "services", "elsewhere", "server_total",
                "max_connections"):  # fmt: skip
        assert key in body, key
    assert body["database"] == test_db_name and body["max_connections"] == limits["m"]
    assert {"service", "total", "budget"} <= set(body["services"][0])
    assert {"datname": other_db, "application_name": "development.api", "count": 5} in body["elsewhere"]
    assert not any(e["datname"] == test_db_name for e in body["elsewhere"])


async def test_gauges_keep_environments_apart(
    other_environment: tuple[str, list[asyncpg.Connection]], client: httpx.AsyncClient
) -> None:
    text = (await client.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("db_instance_connections", (("environment", "development"),))] >= 7
    assert samples[("db_instance_allocation", (("environment", "production"),))] == 280
    assert samples[("db_connection_allocation", (("environment", "test"),))] == 120
    assert ("db_server_connections", (("environment", "test"), ("service", "other"))) in samples
    # another environment's connections are never charged to this one's services or "other"
    charged = sum(v for (name, labels), v in samples.items() if name == "db_server_connections")
    assert not any(dict(labels).get("environment") == "development"
                   for (name, labels) in samples if name == "db_server_connections")  # fmt: skip
    assert samples[("db_server_max_connections", ())] >= 1 and charged >= 1


def test_guard_refuses_what_the_server_cannot_hold(
    subprocess_env: dict[str, str], pg_max_connections: int
) -> None:
    """The development topology (176, 244 while its workflow worker redeploys) fits an allocation of 300,
    but not this server."""
    env = {**subprocess_env, "ENVIRONMENT": "development", "DB_CONNECTION_BUDGET": "300",
           "DB_BUDGET_ENFORCEMENT": "strict", "DB_POOL_SIZE": "4", "DB_MAX_OVERFLOW": "3",
           "LANGGRAPH_POOL_MAX_SIZE": "10", "LANGGRAPH_POOL_MIN_SIZE": "2"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "app.budget", "--guard", "--service", "api"],
        cwd=BACKEND, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if pg_max_connections - 3 >= 244:
        pytest.skip(f"this server accepts {pg_max_connections} connections: nothing to refuse")
    assert result.returncode == 1 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("connection budget")]
    assert len(lines) == 1, result.stderr
    assert f"(max_connections {pg_max_connections} - superuser_reserved_connections" in lines[0]
    assert "DB_CONNECTION_BUDGET" not in lines[0].split(";")[0]  # the allocation itself is not the problem
    # warn: the service starts, and says why it may not fit
    result = subprocess.run(
        [sys.executable, "-m", "app.budget", "--guard", "--service", "api"],
        cwd=BACKEND, env={**env, "DB_BUDGET_ENFORCEMENT": "warn"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == ""
    assert "db_budget_exceeded" in result.stderr and "over_server_by=" in result.stderr


def test_guard_is_quiet_when_it_fits() -> None:
    found = suggest(settings_for("production"))
    settings = settings_for("production").model_copy(
        update={**found.env(), "DB_BUDGET_ENFORCEMENT": "strict"}
    )
    with structlog.testing.capture_logs() as logs:
        enforce_budget(settings, "api", read_server=False)
    assert logs == []


def test_the_english_guide_shows_the_tables_the_code_computes(standalone_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(BACKEND.parent / "scripts" / "update_generated.py"), "--check"],
        env=standalone_env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = (BACKEND.parent / "docs" / "connection-pool-guide.md").read_text()
    assert "**250 < 280**" in doc and "**108 < 120**" in doc and "**460**" in doc


def test_a_misspelt_setting_is_refused_not_ignored(standalone_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.budget", "--environment", "production", "--set", "API_REPLICA=3"],
        cwd=BACKEND, env=standalone_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and "API_REPLICA: no such setting" in result.stderr


@pytest.mark.parametrize("environment", ["production", "development"])
def test_deploy_windows(environment: str) -> None:
    budget = budget_from_settings(settings_for(environment))
    totals = {s.name: s.max_connections for s in budget.services}
    assert budget.window("none").worst_case == budget.worst_case
    one = budget.window("one_service")
    assert one.worst_case == budget.worst_case + max(totals.values()) and totals[one.service] == max(
        totals.values()
    )
    assert budget.window("all_services").worst_case == 2 * budget.worst_case - budget.admin_reserve
    # replicas: a service with two replicas redeploys both beside the old two
    two = budget_from_settings(settings_for(environment, {"API_REPLICAS": "2"}))
    api = two.service("api").max_connections
    assert two.window("all_services").worst_case == budget.window("all_services").worst_case + api


def test_strict_refuses_a_fleet_that_fits_only_while_standing_still() -> None:
    """Steady, the suggested one-at-a-time pools fit with room; a push that redeploys everything does not."""
    found = suggest(settings_for("production"))
    sized = {k: str(v) for k, v in found.env().items()}
    steady = budget_from_settings(settings_for("production", {**sized, "DB_BUDGET_DEPLOY_CASE": "none"}))
    everything = budget_from_settings(
        settings_for("production", {**sized, "DB_BUDGET_DEPLOY_CASE": "all_services"})
    )
    assert steady.fits and not everything.fits
    env = production_env(DB_BUDGET_ENFORCEMENT="strict", DB_BUDGET_DEPLOY_CASE="all_services", **sized)
    result = subprocess.run(
        [sys.executable, "-m", "app.budget", "--guard"], cwd=BACKEND, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "while every service redeploying (DB_BUDGET_DEPLOY_CASE=all_services" in result.stderr


@pytest.mark.parametrize("case", ["one_service", "all_services"])
def test_json_carries_both_moments_and_suggest_fits_the_planned_one(
    standalone_env: dict[str, str], case: str
) -> None:
    status, body = budget_json(
        standalone_env, "--environment", "production", "--set", f"DB_BUDGET_DEPLOY_CASE={case}"
    )
    assert status == 1 and body["steady"] == {"worst_case": 460, "fits": False}
    assert body["deploy"]["case"] == case and body["deploy"]["fits"] is False
    assert body["deploy"]["one_service"] == {
        "case": "one_service",
        "worst_case": 640,
        "service": "celery_workflow",
    }
    assert body["deploy"]["all_services"]["worst_case"] == 900
    status, found = budget_json(
        standalone_env, "--environment", "production", "--suggest", "--no-server",
        "--set", f"DB_BUDGET_DEPLOY_CASE={case}",
    )  # fmt: skip
    assert status == 0 and found["fits"] and found["deploy"]["case"] == case
    assert found["deploy"]["worst_case"] <= 280 and found["server_error"] is None
    sets = [a for name, value in found["env"].items() for a in ("--set", f"{name}={value}")]
    status, body = budget_json(
        standalone_env, "--environment", "production", "--set", f"DB_BUDGET_DEPLOY_CASE={case}", *sets
    )
    assert status == 0 and body["steady"]["fits"] and body["deploy"]["fits"]
    assert body["deploy"]["worst_case"] == found["deploy"]["worst_case"]


def test_suggest_fits_what_the_server_leaves(
    standalone_env: dict[str, str], database_url: str, pg_max_connections: int
) -> None:
    """Against the test server (100 connections here: 97 usable), the development topology is sized
    for the lower of the allocation and what the server leaves, deploy window included."""
    status, found = budget_json(
        standalone_env, "--environment", "development", "--suggest", "--set", f"DATABASE_URL={database_url}"
    )
    server = found["server"]
    assert server is not None and found["server_error"] is None
    assert server["usable"] <= pg_max_connections - 3
    assert found["ceiling"] == min(120, server["available"])
    if found["ceiling"] < 40:
        pytest.skip(f"this server leaves {found['ceiling']}: too little for any development topology")
    assert status == 0 and found["fits"]
    assert found["steady"]["worst_case"] <= found["deploy"]["worst_case"] <= found["ceiling"]


def test_suggest_says_when_it_cannot_reach_the_server(standalone_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.budget", "--environment", "development", "--suggest",
         "--set", "DATABASE_URL=postgresql://nobody@127.0.0.1:1/none"],
        cwd=BACKEND, env=standalone_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0
    assert "server not reachable (" in result.stdout and "sized for the allocation alone" in result.stdout


async def test_other_databases_caps_are_left_to_them(pg: asyncpg.Connection, database_url: str) -> None:
    """A CONNECTION LIMIT on another database (another environment's cap) is taken off what this one
    can count on."""
    from app.budget.guard import probe_server_limits

    settings = settings_for("development", {"DATABASE_URL": database_url})
    before, error = probe_server_limits(settings)
    assert before is not None, error
    other = f"budget_other_{uuid.uuid4().hex[:8]}"
    await pg.execute(f'CREATE DATABASE "{other}" CONNECTION LIMIT 30')
    try:
        after, _ = probe_server_limits(settings)
    finally:
        await pg.execute(f'DROP DATABASE "{other}"')
    assert after is not None and after.others == before.others + 30
    assert after.available == after.usable - after.others
