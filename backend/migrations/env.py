"""Async Alembic environment: runs with the app's settings, one unpooled connection, then exits."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from app.config import connections
from app.config.settings import get_settings
from app.db.engine import build_unpooled_engine, engine_options
from app.db.models import Base, alembic_include_name
from app.topology import MIGRATE

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=alembic_include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = build_unpooled_engine(engine_options(get_settings(), MIGRATE))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=connections.database_url(get_settings()), target_metadata=target_metadata, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
