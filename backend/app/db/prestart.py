"""The explicit prestart step: wait for PostgreSQL, then migrate to head, once, under a lock.

Run by ``backend/scripts/prestart.sh``: Railway's ``preDeployCommand``, compose's ``migrate`` service,
``dev.sh``. Migrations never run as a side effect of importing the app: every uvicorn worker would then
run its own, concurrently.

Two prestarts may still start together (two services deploying at once, replicas started with
``RUN_MIGRATIONS=1``). Each takes a session-level PostgreSQL advisory lock first, on its own
connection, and holds it until the migration and the checkpointer tables are done: the second waits,
then finds the schema at head and does nothing. Both exit 0.

Under the same lock it sets the server's cap on this environment when ``DB_CONNECTION_CAP`` asks
(``app.db.connection_cap``): altered only where it differs, one ``db_connection_cap`` log event either
way; a role that may not alter it stops the deploy with the SQL an administrator should run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import psycopg
import structlog
from alembic import command
from alembic.config import Config
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from sqlalchemy import text
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_incrementing

from app.config import connections
from app.config.connections import libpq_params
from app.config.settings import Settings, get_settings
from app.core.logging import configure_logging
from app.db import connection_cap
from app.db.engine import build_unpooled_engine, direct_connection, engine_options
from app.db.errors import is_database_misconfigured
from app.topology import MIGRATE

log = structlog.get_logger("app.prestart")

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"
# pg_advisory_lock key of the migration step: any constant, the same in every process of every version.
MIGRATION_LOCK_KEY = 0x726F61646D6170  # "roadmap"


def alembic_config() -> Config:
    return Config(str(ALEMBIC_INI))


async def _ping() -> None:
    engine = build_unpooled_engine(engine_options(get_settings(), MIGRATE))
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


def _not_ready(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.info("database_not_ready", attempt=state.attempt_number, error=str(error))


def wait_for_database(timeout: float) -> None:
    """Ping until PostgreSQL answers; any failure means "not yet". The pause after each failure grows,
    up to a cap: a server about to accept is found quickly, one still starting is not hammered. After
    ``timeout`` seconds of failures, exit with the last one."""

    def unreachable(state: RetryCallState) -> NoReturn:
        error = state.outcome.exception() if state.outcome else None
        log.error("database_unreachable", attempts=state.attempt_number, error=str(error))
        raise SystemExit(f"database not reachable after {timeout:.0f} s: {error}")

    try:
        Retrying(
            stop=stop_after_delay(timeout),
            wait=wait_incrementing(start=0.25, increment=0.25, max=2.0),
            # No such database (3D000) or a role refused (28xxx): waiting will not fix configuration.
            retry=retry_if_exception(lambda error: not is_database_misconfigured(error)),
            before_sleep=_not_ready,
            retry_error_callback=unreachable,
        )(lambda: asyncio.run(_ping()))
    except Exception as error:
        if not is_database_misconfigured(error):
            raise
        log.error("database_misconfigured", error=_first_line(error))
        raise SystemExit(
            f"database misconfigured: {_first_line(error)}; check DATABASE_URL (or POSTGRES_*)"
        ) from None


def _first_line(error: BaseException) -> str:
    """The server's message without the driver's wrapping (SQLAlchemy appends SQL and a link)."""
    for candidate in (getattr(error, "orig", None), error):
        text = str(candidate or "").strip()
        if text:
            return text.splitlines()[0].split("'>: ")[-1]
    return type(error).__name__


@contextmanager
def migration_lock(timeout: float) -> Iterator[psycopg.Connection]:
    """Hold the migration advisory lock for the block; wait for it at most ``timeout`` seconds.

    A session-level lock on a connection of its own, in autocommit: a lock held by an open transaction
    instead would block the checkpointer's ``CREATE INDEX CONCURRENTLY``, which waits for every older
    transaction. Closing the connection releases the lock whatever happens.
    """
    settings = get_settings()
    if settings.DB_BEHIND_PGBOUNCER:
        # Transaction pooling would take the lock on one server connection and release it on another.
        raise SystemExit(
            "prestart needs PostgreSQL directly (a session-level lock, CREATE INDEX CONCURRENTLY): run it "
            "with DATABASE_URL pointing at the server and DB_BEHIND_PGBOUNCER=false"
        )
    with direct_connection(settings, MIGRATE) as conn:
        deadline = time.monotonic() + timeout
        waited = False
        locked = "SELECT pg_try_advisory_lock(%s)"
        while not conn.execute(locked, (MIGRATION_LOCK_KEY,)).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() >= deadline:
                raise SystemExit(f"another prestart held the migration lock for more than {timeout:.0f} s")
            if not waited:
                log.info("prestart_waiting_for_migration_lock")
                waited = True
            time.sleep(0.5)
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def schema_revision(conn: psycopg.Connection) -> str | None:
    if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def apply_connection_cap(conn: psycopg.Connection, settings: Settings) -> None:
    """The server-side cap on this environment, when DB_CONNECTION_CAP asks for one: one log event."""
    if settings.DB_CONNECTION_CAP == "off":
        return
    try:
        in_force, changes = connection_cap.apply(conn, settings)
    except connection_cap.CapNotPermitted as refused:
        log.error("db_connection_cap_not_permitted", error=str(refused))
        raise
    # A superuser app role is exempt from the cap it just set: say so in the same event.
    emit = log.warning if in_force.superuser else log.info
    emit(
        "db_connection_cap",
        database=in_force.database,
        role=in_force.role,
        cap=connection_cap.expected_cap(settings),
        scope=settings.DB_CONNECTION_CAP,
        changed=[f"{c.target} {c.before} -> {c.after}" for c in changes],
        superuser_exempt=in_force.superuser,
    )


async def setup_checkpointer_tables() -> None:
    """Create/upgrade LangGraph's tables. Its migrations include CREATE INDEX CONCURRENTLY, which needs
    autocommit: a single plain connection, closed afterwards."""
    settings = get_settings()
    async with await psycopg.AsyncConnection.connect(
        connections.checkpointer_conninfo(settings),
        autocommit=True,
        row_factory=dict_row,
        **libpq_params(settings, MIGRATE),
    ) as conn:
        await AsyncPostgresSaver(conn).setup()  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the database")
    parser.add_argument("--revision", default="head")
    parser.add_argument("--lock-timeout", type=float, default=600.0, help="seconds to wait for the lock")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings, service=MIGRATE)
    log.info("prestart_begin", database=connections.database_url_masked(settings))
    wait_for_database(args.wait)
    with migration_lock(args.lock_timeout) as conn:
        before = schema_revision(conn)
        command.upgrade(alembic_config(), args.revision)
        # LangGraph's checkpoint tables are created here too, never by a worker at run time.
        asyncio.run(setup_checkpointer_tables())
        after = schema_revision(conn)
        apply_connection_cap(conn, settings)
    log.info("prestart_done", revision=args.revision, migrated_from=before, migrated_to=after)


if __name__ == "__main__":
    main()
