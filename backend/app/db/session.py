"""``safe_session()``: the one way application code borrows a database connection.

It commits on success, rolls back on error and always returns the connection to the pool, which is
what makes leaks impossible by construction. It is also where a pool timeout surfaces, so this is where
``db_pool_connection_timeouts_total`` is counted before the error travels on (the API turns it into
a 503, a Celery task into a retry).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import current_service, get_sessionmaker
from app.db.pool_metrics import record_pool_timeout

log = structlog.get_logger("app.db")


@asynccontextmanager
async def safe_session() -> AsyncIterator[AsyncSession]:
    session = get_sessionmaker()()
    try:
        yield session
        await session.commit()
    except exc.TimeoutError:
        # Raised by the pool after DB_POOL_TIMEOUT seconds of waiting: the pool is exhausted.
        record_pool_timeout(current_service())
        log.warning("db_pool_timeout", pool_service=current_service())
        await session.rollback()
        raise
    except BaseException:
        await session.rollback()
        raise
    finally:
        await session.close()


async def get_db_session() -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one session per request, released as soon as the endpoint returns."""
    async with safe_session() as session:
        yield session
