"""PostgreSQL for the tests that need it: the session's database, connections to check what the app
wrote, and a private server a test may stop.

The session's database is created and migrated (with the real prestart step) only when a test first
asks for it, through ``migrated_database`` or a fixture that depends on it: the tests of pure logic
(settings, the budget model, the topology) then run on a machine without PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from devkit.postgres import OwnPostgres, execute
from tests.support.env import ADMIN_URL, BACKEND, BASE_ENV, REDIS_URL, TEST_DB


@pytest.fixture(scope="session")
def migrated_database() -> Iterator[str]:
    """The session's database URL. A server that is not there fails the tests that need it at once,
    saying so, instead of each of them timing out on its own; it is created at most once per session,
    and dropped at its end with the Redis keys of the session's prefix."""
    refused = create_database()
    if refused:
        pytest.fail(
            f"this test needs PostgreSQL, and CREATE DATABASE on TEST_DATABASE_URL={ADMIN_URL} failed:"
            f" {refused} (scripts/test.sh starts one when none answers)",
            pytrace=False,
        )
    try:
        migrate()
        yield BASE_ENV["DATABASE_URL"]
    finally:
        execute(ADMIN_URL, f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
        forget_redis_keys()


def create_database() -> str | None:
    """Why the server refused, if it did: reported outside the handler, without a chained traceback."""
    try:
        execute(ADMIN_URL, f'CREATE DATABASE "{TEST_DB}"')
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def migrate() -> None:
    """The prestart step reads settings from the environment: the session's, whatever a test left."""
    from app.config.settings import get_settings
    from app.db.prestart import main as prestart

    with pytest.MonkeyPatch.context() as env:
        for key, value in BASE_ENV.items():
            env.setenv(key, value)
        get_settings.cache_clear()
        try:
            prestart(["--wait", "10"])
        finally:
            get_settings.cache_clear()


def forget_redis_keys() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{TEST_DB}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def test_db_name(migrated_database: str) -> str:
    return TEST_DB


@pytest.fixture
def database_url(migrated_database: str) -> str:
    return migrated_database


@asynccontextmanager
async def _direct(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pg(migrated_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct admin connection for asserting on what the server sees (pg_stat_activity)."""
    async with _direct(ADMIN_URL) as conn:
        yield conn


@pytest.fixture
async def test_db(migrated_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the session's test database, for checking rows the app wrote."""
    async with _direct(migrated_database) as conn:
        yield conn


@pytest.fixture
async def pg_max_connections(pg: asyncpg.Connection) -> int:
    return int(await pg.fetchval("SHOW max_connections"))


@pytest.fixture
def own_postgres(subprocess_env: dict[str, str]) -> Iterator[OwnPostgres]:
    """A private PostgreSQL (its database ``app`` migrated) that a test may stop, cut or restart."""
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
