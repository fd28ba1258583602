"""The ways application code borrows a database connection, each returning it whatever happens.

* ``safe_session()``: an ORM session in a transaction, for writes. It commits on success, rolls back
  on error and always returns the connection to the pool, which makes leaks impossible by construction.
* ``autocommit()``: a connection on which each statement commits by itself, for single statements
  (an atomic ``UPDATE ... RETURNING``) whose row locks should end with the statement.
* ``read(query)``: one read on a pooled connection, for the request path's reads, executed by asyncpg
  (``app.db.reader``: SQLAlchemy's execution cost more than the driver's). A read needs no BEGIN/COMMIT
  round trips, and the routes' reads are single statements, so a request costs one round trip (behind
  PgBouncer in transaction mode a transaction is kept: see ``autocommit``). A read that finds its
  connection dead (killed while pooled) runs once more on a fresh one: reads are idempotent, and the
  pool has already replaced every connection older than the failure.
* ``limit_checkouts(n)``: a bound on the sessions a task's own fan-out holds at once.

``safe_session()``, ``autocommit()`` and ``read()`` are where a pool timeout surfaces, so this is where
``db_pool_connection_timeouts_total`` is counted before the error travels on (the API turns it into a
503, a Celery task into a retry).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TypeVar

import structlog
from sqlalchemy import Connection, exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.util import greenlet_spawn

from app.config.settings import get_settings
from app.db.engine import get_engine, get_sessionmaker, process_engine
from app.db.pool_metrics import record_pool_timeout
from app.db.reader import Reader

log = structlog.get_logger("app.db")


@asynccontextmanager
async def safe_session() -> AsyncIterator[AsyncSession]:
    async with _gated(), _session() as session:
        yield session


@asynccontextmanager
async def _session() -> AsyncIterator[AsyncSession]:
    session = get_sessionmaker()()
    try:
        yield session
        await session.commit()
    except exc.TimeoutError:
        # Raised by the pool after DB_POOL_TIMEOUT seconds of waiting: the pool is exhausted.
        _pool_timed_out()
        await session.rollback()
        raise
    except BaseException:
        await session.rollback()
        raise
    finally:
        await session.close()


T = TypeVar("T")
# A bound on this task's concurrent checkouts (limit_checkouts), inherited by the tasks it gathers.
_checkout_gate: ContextVar[asyncio.Semaphore | None] = ContextVar("db_checkout_gate", default=None)


@contextmanager
def limit_checkouts(slots: int) -> Iterator[None]:
    """Within the block (and the tasks it starts), at most ``slots`` sessions at once: a content task's
    concept fan-out then queues for the pool below its high-usage mark instead of piling onto it."""
    token = _checkout_gate.set(asyncio.Semaphore(slots))
    try:
        yield
    finally:
        _checkout_gate.reset(token)


@asynccontextmanager
async def _gated() -> AsyncIterator[None]:
    gate = _checkout_gate.get()
    if gate is None:
        yield
        return
    try:
        await asyncio.wait_for(gate.acquire(), get_settings().DB_POOL_TIMEOUT)
    except TimeoutError:
        raise exc.TimeoutError("no checkout slot of this task's fan-out came free in time") from None
    try:
        yield
    finally:
        gate.release()


def _pool_timed_out() -> None:
    record_pool_timeout(process_engine().service)
    log.warning("db_pool_timeout", pool_service=process_engine().service)


@asynccontextmanager
async def _pooled() -> AsyncIterator[AsyncConnection]:
    try:
        async with _gated(), get_engine().connect() as conn:
            yield conn
    except exc.TimeoutError:
        _pool_timed_out()
        raise


@asynccontextmanager
async def autocommit() -> AsyncIterator[AsyncConnection]:
    """A pooled connection on which each statement commits by itself: for single statements (a read,
    an atomic ``UPDATE ... RETURNING``), no BEGIN/COMMIT round trips, and a row lock taken by the
    statement is released as soon as it ends rather than at a later COMMIT."""
    # Behind PgBouncer in transaction mode a statement's parse and execute must share a transaction to
    # reach the same server connection: there the block runs in one, committed at its end.
    behind_pgbouncer = get_settings().DB_BEHIND_PGBOUNCER
    async with _pooled() as conn:
        if not behind_pgbouncer:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn
        if behind_pgbouncer:
            await conn.commit()


async def read(query: Callable[[Reader], Awaitable[T]]) -> T:
    """Run ``query`` on a pooled connection, its statements executed by asyncpg (``app.db.reader``);
    once more if that connection was dead."""
    transactional = get_settings().DB_BEHIND_PGBOUNCER
    for attempt in (1, 2):
        try:
            async with _gated():
                connection = await _checkout()
                try:
                    return await query(Reader.on(connection, transactional=transactional))
                finally:
                    await greenlet_spawn(connection.close)
        except exc.DBAPIError as error:
            if attempt == 2 or not error.connection_invalidated:
                raise
            log.info("db_read_retried_on_fresh_connection", error_type=type(error.orig).__name__)
    raise AssertionError("unreachable")


async def _checkout() -> Connection:
    """SQLAlchemy's own synchronous ``Connection``, checked out in a greenlet as ``AsyncEngine.connect()``
    does, without the ``AsyncConnection`` around it: that wrapper's return runs in a task of its own
    (``asyncio.shield``) and its raw connection in one more greenlet, which took a read's checkout and
    return from 44 to 75 us (docs/benchmarks.md, "The request path at FastAPI's pace"). Everything
    else is the same connection: the pool's events and metrics, the connect errors SQLAlchemy wraps
    and counts, ``handle_error``. The shield is not needed here: returning a read's connection does
    no I/O (asyncpg ran its statements; SQLAlchemy began no transaction to roll back), except when an
    overflow connection finds the pool full and is closed, and a cancellation there makes asyncpg
    abort the socket and SQLAlchemy still give back the overflow slot."""
    try:
        return await greenlet_spawn(get_engine().sync_engine.connect)
    except exc.TimeoutError:
        _pool_timed_out()
        raise


async def get_db_session() -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one session per request, released as soon as the endpoint returns."""
    async with safe_session() as session:
        yield session
