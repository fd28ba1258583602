"""Which database errors mean "the database is unavailable right now" (retry later, answer 503).

Connection failures reach us in several forms: raw ``OSError``s from asyncpg's connect, SQLAlchemy's
``OperationalError`` / ``InterfaceError``, an invalidated connection, or a server error whose SQLSTATE
class says so: 08 (connection exception), 57 (operator intervention: shutdown, restart, "the database
system is starting up", and 57014, a statement cancelled by ``statement_timeout``), 53 (insufficient
resources: too many connections). Everything else (a constraint, a bad query) is a bug or bad input and
must not be retried or disguised.

A deadline that expired is "unavailable" too: ``TimeoutError`` (asyncpg's ``command_timeout`` and connect
timeout, the checkpointer's ``CheckpointerTimeout``) means the server did not answer in time.

The LangGraph checkpointer talks psycopg, not SQLAlchemy: ``psycopg.OperationalError`` (connection lost,
connect timeout, and the SQLSTATE classes above) and ``psycopg.InterfaceError`` (a connection already
closed) count, and so does ``psycopg_pool.PoolTimeout``: unlike the SQLAlchemy pool's timeout, which only
fires when this process is busy, the checkpointer pool's also fires when it cannot reconnect to a server
that is down, and it cannot tell the two apart; either way a workflow step should be retried later.
``PoolClosed`` does not count: the process is shutting down, and retrying would only delay that.

Within class 53, a connection refused with 53300 ("too many connections for database / role", "sorry, too
many clients already") is also ``allocation_exhausted``: the server's cap on this environment (or the
server itself) is full. Still "unavailable" (a task retries it), but the API names it apart from an
outage and from this process's own pool being exhausted (``db_pool_exhausted``).
"""

from __future__ import annotations

import socket

import psycopg
import psycopg_pool
from sqlalchemy import exc

from app.config.connections import refused_for_slots

_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "57", "53")
# statement_timeout (and a cancel request): the server answered, but gave up on the statement in time.
_QUERY_CANCELED = "57014"
# The server answers but refuses this deployment's settings: class 28 (invalid authorization: no such
# role, wrong password) and 3D000 (no such database). Not a bug of the request and not an outage that
# passes: a 503 that names it, so operators see "misconfigured" rather than a 500 or "unreachable".
_MISCONFIGURED_SQLSTATES = ("28", "3D000")


def _chain(error: BaseException, limit: int = 8) -> list[BaseException]:
    """The error, what SQLAlchemy wrapped (``orig``) and their causes: drivers nest the real reason
    (asyncpg: Error <- ConnectionDoesNotExistError <- AdminShutdownError 57P01)."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending and len(seen) < limit:
        current = pending.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return seen


def _sqlstate(chain: list[BaseException]) -> str | None:
    for candidate in chain:
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


# PgBouncer refuses startup parameters it does not know (08P01, "unsupported startup parameter:
# statement_timeout"): the services were not told they are behind it. A protocol violation by SQLSTATE,
# so recognised by its message, before class 08 would call it an outage.
_PGBOUNCER_REFUSAL = "unsupported startup parameter"


def is_pgbouncer_refusal(error: BaseException) -> bool:
    return any(_PGBOUNCER_REFUSAL in str(e) for e in _chain(error))


# libpq reports a refused connection as text only (psycopg's OperationalError at connect carries no
# SQLSTATE): the server's English messages for 3D000 and class 28.
_MISCONFIGURED_MESSAGES = (
    "does not exist",  # database "x" / role "x"
    "password authentication failed",
    "no pg_hba.conf entry",
)


def is_database_misconfigured(error: BaseException) -> bool:
    chain = _chain(error)
    state = _sqlstate(chain)
    if state is not None and state.startswith(_MISCONFIGURED_SQLSTATES):
        return True
    connect_text = any(
        isinstance(e, psycopg.OperationalError)
        and not getattr(e, "sqlstate", None)
        and any(m in str(e) for m in _MISCONFIGURED_MESSAGES)
        for e in chain
    )
    return connect_text or is_pgbouncer_refusal(error)


def misconfiguration_fix(error: BaseException) -> str:
    """What to change, in one line, for an error ``is_database_misconfigured`` recognised."""
    if is_pgbouncer_refusal(error):
        return "PgBouncer refused a session setting: set DB_BEHIND_PGBOUNCER=true in every service behind it"
    return "the database refused this service's role or database name: check DATABASE_URL"


def is_database_unavailable(error: BaseException) -> bool:
    if isinstance(error, ConnectionError | socket.gaierror | TimeoutError):
        return True
    if isinstance(error, exc.TimeoutError):
        return False  # pool exhausted: the database is fine, this process is busy
    if isinstance(error, psycopg_pool.PoolClosed):
        return False
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.OperationalError | exc.InterfaceError):
        return True
    chain = _chain(error)
    if any(
        isinstance(e, ConnectionError) or type(e).__name__ == "ConnectionDoesNotExistError" for e in chain
    ):
        return True
    state = _sqlstate(chain)
    return state is not None and state.startswith(_UNAVAILABLE_SQLSTATE_CLASSES)


def is_allocation_exhausted(error: BaseException) -> bool:
    """The server refused a new connection for want of slots (SQLSTATE 53300), whichever driver saw it."""
    return any(refused_for_slots(e) for e in _chain(error))


def is_database_timeout(error: BaseException) -> bool:
    """An unavailable database that failed a deadline (rather than refusing or dropping a connection):
    the API names it ``database_timeout`` so an operator looks for a stalled server or network."""
    chain = _chain(error)
    if any(isinstance(e, TimeoutError | psycopg_pool.PoolTimeout) for e in chain):
        return True
    return _sqlstate(chain) == _QUERY_CANCELED
