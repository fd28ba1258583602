"""A deadline that answers on time, whatever the operation does when it is cancelled.

The database layers have their own deadlines (statement_timeout on the server, asyncpg's command_timeout,
the API's request deadline in app.api.deadline); psycopg has none on the client, so the checkpointer's
calls go through ``run_within``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("app.deadline")
T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """An operation outlived its deadline (``run_within``). A TimeoutError, so app.db.errors counts it
    as "database unavailable" where the operation was a database call: a task retries, the API 503s."""


# Operations given up on, still unwinding (see run_within); referenced so they are not collected early.
_abandoned: set[asyncio.Task[Any]] = set()


async def run_within(
    seconds: float, what: str, operation: Coroutine[Any, Any, T], error: type[TimeoutError] = DeadlineExceeded
) -> T:
    """``operation``'s result, or ``error`` after ``seconds``, on time.

    Not ``asyncio.wait_for``: that waits for the cancelled operation to finish, and psycopg, cancelled
    mid-query, first sends the server a cancel request and then waits for the query to end, up to
    5 + 5 s against a server that does not answer, before closing the connection. The caller gets its
    answer at the deadline; the cancelled operation unwinds in the background (bounded by psycopg),
    and its connection, closed mid-query, is discarded by the pool rather than reused.
    """
    task = asyncio.ensure_future(operation)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)
    raise error(f"{what} got no answer from the database within {seconds:g} s")


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled() and task.exception() is not None:  # retrieved: no "never retrieved" noise
        log.debug("abandoned_operation_failed", error_type=type(task.exception()).__name__)
