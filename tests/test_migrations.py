"""Migrations run down to nothing and back up, on their own database."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from alembic import command

from app.config.settings import get_settings
from app.db.models import LANGGRAPH_TABLES, Base, alembic_include_name
from app.db.prestart import alembic_config


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

    engine = create_async_engine(get_settings().database_url)
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
