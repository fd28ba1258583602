"""The instrumented pool: gauges agree with the server, usage logs fire, exhaustion answers 503 fast."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import asyncpg
import httpx
import pytest
import structlog
from prometheus_client import REGISTRY
from sqlalchemy import text

from app import sizing
from app.config.settings import get_settings
from app.db.engine import get_engine, pool_snapshot
from app.db.session import safe_session
from tests.support.auth import auth

pytestmark = pytest.mark.usefixtures("migrated_database")


def gauge(name: str, service: str = "api") -> float:
    value = REGISTRY.get_sample_value(name, {"service": service})
    return 0.0 if value is None else value


async def server_count(pg: asyncpg.Connection, db: str, application_name: str = "test.api") -> int:
    return await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
        db,
        application_name,
    )


async def test_gauges_equal_what_pg_stat_activity_counts(pg: asyncpg.Connection, test_db_name: str) -> None:
    engine = get_engine()
    max_connections = sizing.pool_sizing(get_settings()).max_connections
    async with AsyncExitStack() as stack:
        for held in range(1, max_connections + 1):
            conn = await stack.enter_async_context(engine.connect())
            await conn.execute(text("SELECT 1"))
            assert gauge("db_pool_connections_in_use") == held
            assert gauge("db_pool_connections_open") == await server_count(pg, test_db_name) == held
            assert pool_snapshot().checked_out == held
    # Returned to the pool: nothing in use, the pool keeps pool_size open (overflow ones are closed;
    # the API's pool is fixed-size, so it keeps them all).
    assert gauge("db_pool_connections_in_use") == 0
    assert gauge("db_pool_connections_open") == await server_count(pg, test_db_name)
    assert gauge("db_pool_size") == sizing.pool_sizing(get_settings()).pool_size
    assert gauge("db_pool_max_connections") == max_connections


async def test_dispose_closes_every_server_connection(pg: asyncpg.Connection, test_db_name: str) -> None:
    from app import runtime

    async with safe_session() as session:
        await session.execute(text("SELECT 1"))
    assert await server_count(pg, test_db_name) >= 1
    await runtime.current().aclose()
    for _ in range(20):
        if await server_count(pg, test_db_name) == 0:
            break
        await asyncio.sleep(0.05)
    assert await server_count(pg, test_db_name) == 0
    assert gauge("db_pool_connections_open") == 0


async def test_hold_time_is_observed_per_checkout() -> None:
    before = REGISTRY.get_sample_value("db_connection_hold_seconds_count", {"service": "api"}) or 0
    slow_before = (
        REGISTRY.get_sample_value("db_connection_hold_seconds_bucket", {"service": "api", "le": "0.1"}) or 0
    )
    async with safe_session() as session:
        await session.execute(text("SELECT pg_sleep(0.2)"))
    after = REGISTRY.get_sample_value("db_connection_hold_seconds_count", {"service": "api"})
    slow_after = REGISTRY.get_sample_value(
        "db_connection_hold_seconds_bucket", {"service": "api", "le": "0.1"}
    )
    assert after == before + 1
    assert slow_after == slow_before  # held ~0.2 s: not in the <= 0.1 s bucket


async def test_usage_events_at_70_and_90_percent(monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 connections per process, as in production: the 7th checkout is 70%, the 9th is 90%.
    monkeypatch.setenv("DB_POOL_SIZE", "6")
    monkeypatch.setenv("DB_MAX_OVERFLOW", "4")
    monkeypatch.setenv("DB_POOL_USAGE_LOG_INTERVAL", "60")
    get_settings.cache_clear()
    engine = get_engine()
    with structlog.testing.capture_logs() as logs:
        async with AsyncExitStack() as stack:
            for _ in range(10):
                await stack.enter_async_context(engine.connect())
    usage = [entry for entry in logs if entry["event"].startswith("db_pool_")]
    assert [(e["event"], e["log_level"], e["checked_out"], e["usage_ratio"]) for e in usage] == [
        ("db_pool_high_usage", "info", 7, 70.0),
        ("db_pool_critical_usage", "error", 9, 90.0),
    ]  # rate-limited: the 8th and 10th checkouts log nothing
    assert all(e["max_connections"] == 10 for e in usage)


async def test_exhausted_pool_answers_503_within_pool_timeout(client: httpx.AsyncClient) -> None:
    settings = get_settings()
    timeouts_before = gauge("db_pool_connection_timeouts_total")
    engine = get_engine()
    async with AsyncExitStack() as stack:
        for _ in range(sizing.pool_sizing(settings).max_connections):
            await stack.enter_async_context(engine.connect())
        started = time.perf_counter()
        response = await client.get("/api/v1/task-logs", headers=auth("admin"))
        elapsed = time.perf_counter() - started
    assert response.status_code == 503
    assert response.json()["reason"] == "db_pool_exhausted"
    assert response.headers["Retry-After"] == str(settings.RETRY_AFTER_SECONDS)
    assert settings.DB_POOL_TIMEOUT <= elapsed < settings.DB_POOL_TIMEOUT + 0.5
    assert gauge("db_pool_connection_timeouts_total") == timeouts_before + 1
    # And the pool recovers as soon as connections come back.
    assert (await client.get("/api/v1/task-logs", headers=auth("admin"))).status_code == 200


async def test_unreachable_database_is_503_not_500(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/nowhere")
    get_settings.cache_clear()
    response = await client.get("/api/v1/task-logs", headers=auth("admin"))
    assert response.status_code == 503
    assert response.json()["reason"] == "database_unavailable"
    assert "Retry-After" in response.headers


async def test_leak_detection_names_where_a_long_held_connection_was_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_LEAK_DETECTION_THRESHOLD", "0.2")
    get_settings.cache_clear()
    with structlog.testing.capture_logs() as logs:
        async with safe_session() as session:  # returned in time: no warning
            await session.execute(text("SELECT 1"))
        await asyncio.sleep(0.3)
        async with get_engine().connect() as conn:  # held past the threshold
            await conn.execute(text("SELECT 1"))
            await asyncio.sleep(0.35)
    leaks = [e for e in logs if e["event"] == "db_connection_leak_suspected"]
    assert len(leaks) == 1
    assert leaks[0]["log_level"] == "warning" and leaks[0]["threshold_seconds"] == 0.2
    assert leaks[0]["held_seconds"] >= 0.2
    assert "test_pool.py" in leaks[0]["held_by"]
    assert "test_leak_detection_names_where" in leaks[0]["held_by"]


@pytest.mark.parametrize(
    ("what", "url"),
    [
        ("database", "postgresql://postgres@127.0.0.1:5432/no_such_database_{tag}"),  # 3D000
        ("role", "postgresql://no_such_role_{tag}@127.0.0.1:5432/postgres"),  # 28000
    ],
)
async def test_a_wrong_database_or_role_is_503_database_misconfigured(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, what: str, url: str
) -> None:
    """The real server refuses the role or the database: every data route says so, never a 500."""
    import uuid

    monkeypatch.setenv("DATABASE_URL", url.format(tag=uuid.uuid4().hex[:8]))
    get_settings.cache_clear()
    for response in (
        await client.get("/api/v1/roadmaps", headers=auth()),
        await client.get("/api/v1/task-logs", headers=auth("admin")),
        await client.post("/api/v1/roadmaps", json={"topic": "Go"}, headers=auth()),
    ):
        assert response.status_code == 503, (what, response.text)
        assert response.json()["reason"] == "database_misconfigured"
        assert "DATABASE_URL" in response.json()["detail"]
        assert "Retry-After" in response.headers
    assert (await client.get("/health")).status_code == 503
