"""Real PostgreSQL and Redis for every test; one throw-away database per test session.

The session's database is created from TEST_DATABASE_URL (a server on which we may create databases),
migrated with the real prestart step, and dropped at the end, so test runs never see each other's rows
and never touch a development database. Pools are kept small (2 + 1) so that the whole suite stays far
below the local server's 100 connections.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

if TYPE_CHECKING:
    from own_services import OwnPostgres

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "backend"
ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_DB = f"test_{uuid.uuid4().hex[:12]}"

# The environment every test starts from; individual tests override with monkeypatch.
BASE_ENV = {
    "ENVIRONMENT": "test",
    "SERVICE_TYPE": "api",
    "LOG_FORMAT": "console",
    "DATABASE_URL": urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{TEST_DB}")),
    "REDIS_URL": REDIS_URL,
    "DB_POOL_SIZE": "2",
    "DB_MAX_OVERFLOW": "1",
    "DB_POOL_TIMEOUT": "1",
    "DB_POOL_USAGE_LOG_INTERVAL": "0",
    "DB_CONNECTION_BUDGET": "120",
    "DB_ADMIN_RESERVE": "10",
    # Celery's keys and ours live under this prefix: a test run never takes another run's messages.
    "REDIS_KEY_PREFIX": f"{TEST_DB}:",
    "TASK_LOG_FLUSH_INTERVAL": "0.2",
    "JWT_SECRET_KEY": "test-only-secret-0123456789abcdef0123456789",
    "LLM_PROVIDER": "offline",
    "SEARCH_PROVIDER": "offline",
    "LANGGRAPH_POOL_MIN_SIZE": "1",
    "LANGGRAPH_POOL_MAX_SIZE": "3",
    # The guard has its own tests; here it would only warn about the small test topology.
    "DB_BUDGET_ENFORCEMENT": "off",
    # Tests create many roadmaps as one user and run no workflow: the quota has its own tests.
    "ROADMAP_CREATE_RATE_LIMIT": "100000/minute",
    "ROADMAP_MAX_IN_PROGRESS": "10000",
}
os.environ.update(BASE_ENV)
# scripts/own_services.py: private PostgreSQL and Redis servers for the fault tests.
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
os.environ.pop("ENV_FILE", None)


def pytest_configure(config: pytest.Config) -> None:
    from own_services import execute

    execute(ADMIN_URL, f'CREATE DATABASE "{TEST_DB}"')
    from app.db.prestart import main as prestart

    prestart(["--wait", "10"])


def pytest_unconfigure(config: pytest.Config) -> None:
    from own_services import execute

    execute(ADMIN_URL, f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{TEST_DB}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def test_db_name() -> str:
    return TEST_DB


@pytest.fixture
def database_url() -> str:
    return BASE_ENV["DATABASE_URL"]


@pytest.fixture(autouse=True)
async def fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Each test reads settings anew and builds its own engine on its own event loop."""
    from app import runtime
    from app.config.settings import get_settings

    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield
    await runtime.current().aclose()
    runtime.reset()
    get_settings.cache_clear()


def auth(role: str = "user", subject: str = "tester") -> dict[str, str]:
    from app.core.security import create_token

    return {"Authorization": f"Bearer {create_token(subject, role)}"}  # type: ignore[arg-type]


@pytest.fixture
async def client() -> AsyncIterator[object]:
    import httpx

    from app.main import app

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def pg() -> AsyncIterator[asyncpg.Connection]:
    """A direct admin connection for asserting on what the server sees (pg_stat_activity)."""
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def test_db() -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the session's test database, for checking rows the app wrote."""
    conn = await asyncpg.connect(BASE_ENV["DATABASE_URL"], timeout=5)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pg_max_connections(pg: asyncpg.Connection) -> int:
    return int(await pg.fetchval("SHOW max_connections"))


@pytest.fixture
def subprocess_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, **BASE_ENV, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    yield env


@pytest.fixture
def own_postgres(subprocess_env: dict[str, str]) -> Iterator[OwnPostgres]:
    """A private PostgreSQL (its database ``app`` migrated) that a test may stop, cut or restart."""
    from own_services import OwnPostgres

    pg = OwnPostgres(max_connections=100).start()
    try:
        pg.create_database("app")
        subprocess.run(
            [sys.executable, "-m", "app.db.prestart", "--wait", "10"],
            cwd=BACKEND, env={**subprocess_env, "DATABASE_URL": pg.url("app")}, check=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        yield pg
    finally:
        pg.stop()
