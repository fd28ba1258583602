"""Which errors mean "the database is unavailable" (a Celery task retries, the API answers 503), for both
drivers: asyncpg through SQLAlchemy (the app's pools) and psycopg (the LangGraph checkpointer's pool)."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest
from sqlalchemy import exc

from app.core.orchestrator_factory import CheckpointerTimeout
from app.db.errors import is_database_timeout, is_database_unavailable


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
