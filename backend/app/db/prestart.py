"""The explicit prestart step: wait for PostgreSQL, then migrate to head.

Run by ``backend/scripts/prestart.sh`` (and so by the api service before it starts serving). Migrations
never run as a side effect of importing the app: with eight uvicorn workers that would be eight
concurrent migrations.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from app.config.settings import get_settings
from app.core.logging import configure_logging
from app.db.engine import build_unpooled_engine

log = structlog.get_logger("app.prestart")

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def alembic_config() -> Config:
    return Config(str(ALEMBIC_INI))


async def _ping() -> None:
    engine = build_unpooled_engine(get_settings(), service="migrate")
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


def wait_for_database(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            asyncio.run(_ping())
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            if time.monotonic() >= deadline:
                log.error("database_unreachable", attempts=attempt, error=str(exc))
                raise SystemExit(f"database not reachable after {timeout:.0f} s: {exc}") from None
            log.info("database_not_ready", attempt=attempt, error=str(exc))
            time.sleep(min(2.0, 0.25 * attempt))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the database")
    parser.add_argument("--revision", default="head")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings, service="migrate")
    log.info("prestart_begin", database=settings.database_url_masked)
    wait_for_database(args.wait)
    command.upgrade(alembic_config(), args.revision)
    # LangGraph's checkpoint tables are created here too, never by a worker at run time.
    from app.core.orchestrator_factory import setup_checkpointer_tables

    asyncio.run(setup_checkpointer_tables())
    log.info("prestart_done", revision=args.revision)


if __name__ == "__main__":
    main()
