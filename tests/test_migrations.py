"""Migrations run down to nothing and back up, on their own database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from alembic import command
from alembic.script import ScriptDirectory

from app.config import connections
from app.config.settings import get_settings
from app.db.models import LANGGRAPH_TABLES, Base, alembic_include_name
from app.db.prestart import alembic_config
from devkit.postgres import execute
from tests.support.env import BACKEND

pytestmark = pytest.mark.usefixtures("migrated_database")


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


def test_upgrade_downgrade_upgrade(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    name = f"test_mig_{uuid.uuid4().hex[:8]}"
    admin = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    try:
        monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        expected = set(Base.metadata.tables)
        command.upgrade(alembic_config(), "head")
        assert asyncio.run(tables(url)) == expected | {"alembic_version"}
        command.downgrade(alembic_config(), "base")
        assert asyncio.run(tables(url)) == {"alembic_version"}
        command.upgrade(alembic_config(), "head")
        assert asyncio.run(tables(url)) >= expected
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_models_match_the_migrated_schema(database_url: str) -> None:
    """Autogenerate finds nothing to do: the models and the migrations describe the same schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(connections.database_url(get_settings()))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_name": alembic_include_name}),
                    Base.metadata,
                )
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_prestart_created_the_checkpointer_tables(test_db: object) -> None:
    rows = await test_db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")  # type: ignore[attr-defined]
    assert {r["tablename"] for r in rows} >= LANGGRAPH_TABLES


def test_two_concurrent_prestarts_migrate_once(database_url: str, subprocess_env: dict[str, str]) -> None:
    """Two replicas (or two services' preDeployCommand) starting together: both succeed, one migrates."""
    name = f"test_mig_{uuid.uuid4().hex[:8]}"
    admin = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    execute(admin, f'CREATE DATABASE "{name}"')
    try:
        env = {**subprocess_env, "DATABASE_URL": url}
        command = [sys.executable, "-m", "app.db.prestart", "--wait", "20"]
        procs = [
            subprocess.Popen(
                command, cwd=BACKEND, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for _ in range(2)
        ]
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outputs
        migrated = [out for out in outputs if "Running upgrade  -> 0001" in out]
        assert len(migrated) == 1, outputs  # the other waited for the lock, then found head
        assert sum("migrated_to=" in out for out in outputs) == 2
        head = asyncio.run(scalar(url, "SELECT version_num FROM alembic_version"))
        assert head == ScriptDirectory.from_config(alembic_config()).get_current_head()
    finally:
        execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def scalar(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [({"path": "/no_such_database"}, 'database "no_such_database" does not exist'),
     ({"netloc": "no_such_role@{host}"}, 'role "no_such_role" does not exist')],
)  # fmt: skip
def test_prestart_refuses_a_misconfigured_database_at_once(
    database_url: str, subprocess_env: dict[str, str], change: dict[str, str], message: str
) -> None:
    """No such database (3D000) or role (28000) is configuration, not a server still starting: one
    line naming it, at once, instead of a minute of retries."""
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    url = urlunsplit(parts._replace(**{k: v.format(host=host) for k, v in change.items()}))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "app.db.prestart", "--wait", "60"], cwd=BACKEND,
        env={**subprocess_env, "DATABASE_URL": url}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and time.monotonic() - started < 20
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"database misconfigured: {message}; check DATABASE_URL (or POSTGRES_*)", result.stderr
    assert "database_not_ready" not in result.stderr and "Traceback" not in result.stderr
