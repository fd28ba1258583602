"""Which errors mean "the database is unavailable" (a Celery task retries, the API answers 503), for both
drivers: asyncpg through SQLAlchemy (the app's pools) and psycopg (the LangGraph checkpointer's pool)."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest
from sqlalchemy import exc

from app.core.checkpointer_saver import CheckpointerTimeout
from app.db.errors import (
    is_allocation_exhausted,
    is_database_misconfigured,
    is_database_timeout,
    is_database_unavailable,
)


@pytest.mark.parametrize(
    ("error", "unavailable", "timeout"),
    [
        (TimeoutError(), True, True),
        (CheckpointerTimeout("aput"), True, True),
        (psycopg_pool.PoolTimeout("couldn't get a connection after 5.00 sec"), True, True),
        (psycopg_pool.TooManyRequests("too many requests"), True, False),
        (psycopg.OperationalError("connection failed: server closed the connection"), True, False),
        (psycopg.errors.ConnectionTimeout("connection timeout expired"), True, False),
        (psycopg.InterfaceError("the connection is closed"), True, False),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), True, True),
        (psycopg.errors.AdminShutdown("terminating connection"), True, False),
        # Not the database's availability: shutting down, a bug, bad input.
        (psycopg_pool.PoolClosed("the pool is closed"), False, False),
        (psycopg.errors.UniqueViolation("duplicate key"), False, False),
        (psycopg.errors.UndefinedTable("no such table"), False, False),
        (exc.TimeoutError("QueuePool limit reached"), False, False),
        (ValueError("a bug"), False, False),
    ],
)
def test_errors_of_both_drivers_are_classified(error: Exception, unavailable: bool, timeout: bool) -> None:
    assert is_database_unavailable(error) is unavailable
    if unavailable:
        assert is_database_timeout(error) is timeout


def _refused(message: str) -> psycopg.OperationalError:
    # What psycopg raises when the server refuses at connect: libpq's text, no SQLSTATE.
    return psycopg.OperationalError(f'connection failed: connection to server at "127.0.0.1", port 5432 '
                                    f"failed: FATAL:  {message}")  # fmt: skip


@pytest.mark.parametrize(
    ("error", "exhausted"),
    [
        (_refused('too many connections for database "roadmap_dev"'), True),
        (_refused('too many connections for role "roadmap"'), True),
        (_refused("sorry, too many clients already"), True),
        (psycopg.errors.TooManyConnections("too many connections"), True),  # SQLSTATE 53300
        # Class 53 but not a refused connection; refusals of another kind; this process's own pool.
        (psycopg.errors.OutOfMemory("out of memory"), False),
        (_refused("the database system is starting up"), False),
        (_refused('password authentication failed for user "roadmap"'), False),
        (psycopg.errors.CannotConnectNow("the database system is shutting down"), False),
        (exc.TimeoutError("QueuePool limit of size 10 overflow 0 reached"), False),
        (psycopg_pool.PoolTimeout("couldn't get a connection after 5.00 sec"), False),
    ],
)
def test_a_connection_refused_for_want_of_slots_is_allocation_exhausted(
    error: Exception, exhausted: bool
) -> None:
    """Kept apart from an outage and from a busy pool (503 allocation_exhausted), yet still "unavailable",
    so that a Celery task retries it; never "misconfigured"."""
    assert is_allocation_exhausted(error) is exhausted
    if exhausted:
        assert is_database_unavailable(error) and not is_database_misconfigured(error)
