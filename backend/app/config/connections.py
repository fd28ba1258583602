"""How a connection is parametrised from the settings, for both drivers: asyncpg (the SQLAlchemy
engine) and libpq (psycopg: the checkpointer pool, the guard, the migration lock).

Pure functions of ``Settings``, no I/O, so the engine and the checkpointer pool, which live in
different layers, name and bound their connections the same way: ``application_name`` =
``<environment>.<service>``, the same connect deadline, and the same server-side session settings
(``statement_timeout``, ``idle_in_transaction_session_timeout``, TCP keepalives), and both recognise
a connection the server refused for want of slots (``refused_for_slots``) the same way.
"""

from __future__ import annotations

import math
import uuid

import psycopg
from sqlalchemy.engine import make_url

from app.config.settings import TCP_KEEPALIVES_COUNT, TCP_KEEPALIVES_INTERVAL, Settings


def asyncpg_connect_args(settings: Settings, service: str) -> dict[str, object]:
    args: dict[str, object] = {
        "timeout": settings.DB_CONNECT_TIMEOUT,
        "command_timeout": settings.command_timeout(service),
        "server_settings": {
            "application_name": settings.application_name(service),
            **settings.session_settings(service),
        },
    }
    if settings.DB_BEHIND_PGBOUNCER:
        # Transaction pooling hands each transaction a different server connection: a statement
        # prepared on one is unknown on the next. asyncpg's cache goes, and the statements SQLAlchemy
        # still prepares get unique names so they never collide on a shared server connection.
        args["statement_cache_size"] = 0
        args["prepared_statement_name_func"] = lambda: f"__asyncpg_{uuid.uuid4().hex}__"
    return args


def engine_url(settings: Settings) -> str:
    url = make_url(settings.database_url)
    if settings.DB_BEHIND_PGBOUNCER:
        url = url.update_query_dict({"prepared_statement_cache_size": "0"})
    return url.render_as_string(hide_password=False)


def libpq_params(settings: Settings, service: str) -> dict[str, object]:
    """psycopg connection parameters with the same name, connect deadline and server settings as the
    asyncpg connections, plus client-side TCP keepalives (libpq has them; asyncpg does not)."""
    params: dict[str, object] = {
        "application_name": settings.application_name(service),
        # libpq counts whole seconds (and treats 1 as 2); never 0, which would mean "wait forever".
        "connect_timeout": max(1, math.ceil(settings.DB_CONNECT_TIMEOUT)),
        "keepalives": 1,
        "keepalives_idle": settings.DB_TCP_KEEPALIVES_IDLE,
        "keepalives_interval": TCP_KEEPALIVES_INTERVAL,
        "keepalives_count": TCP_KEEPALIVES_COUNT,
    }
    server = settings.session_settings(service)
    if server:
        params["options"] = " ".join(f"-c {name}={value}" for name, value in server.items())
    return params


# SQLSTATE 53300 (too_many_connections): a database's or a role's CONNECTION LIMIT is reached, or the
# server's own max_connections ("sorry, too many clients already").
TOO_MANY_CONNECTIONS = "53300"
# libpq reports a refused connection as text only (psycopg's OperationalError at connect carries no
# SQLSTATE), so for psycopg the server's messages are matched: English, the default of managed servers.
_REFUSED_MESSAGES = (
    "too many connections for database",
    "too many connections for role",
    "too many clients already",
)


def refused_for_slots(error: BaseException) -> bool:
    """Whether this one exception (not its causes) is the server refusing a connection with 53300.

    Here rather than in ``app.db.errors`` because the checkpointer pool (``app.core``) counts these
    refusals too, and ``app.core`` may not import ``app.db``.
    """
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(state, str):
        return state == TOO_MANY_CONNECTIONS
    return isinstance(error, psycopg.OperationalError) and any(m in str(error) for m in _REFUSED_MESSAGES)
