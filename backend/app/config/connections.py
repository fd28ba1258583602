"""How a connection is parametrised from the settings, for both drivers: asyncpg (the SQLAlchemy
engine) and libpq (psycopg: the checkpointer pool, the guard, the migration lock).

Pure functions of ``Settings``, no I/O, so the engine and the checkpointer pool, which live in
different layers, build the same URLs and name and bound their connections the same way
(``application_name``, connect deadline, server-side session settings), and recognise a connection
the server refused for want of slots (``refused_for_slots``) the same way.
"""

from __future__ import annotations

import math
import uuid
from urllib.parse import quote

import psycopg
from sqlalchemy.engine import make_url

from app.config.settings import Settings
from app.config.urls import mask_url, redis_cert_reqs, to_asyncpg_url, to_libpq_url
from app.topology import MIGRATE

# After DB_TCP_KEEPALIVES_IDLE, a silent peer is probed every TCP_KEEPALIVES_INTERVAL seconds and given
# up after TCP_KEEPALIVES_COUNT unanswered probes.
TCP_KEEPALIVES_INTERVAL = 10
TCP_KEEPALIVES_COUNT = 3


def database_url(settings: Settings) -> str:
    """asyncpg URL for SQLAlchemy. Contains the password: never log it, use ``database_url_masked``."""
    if settings.DATABASE_URL is not None:
        return to_asyncpg_url(settings.DATABASE_URL.get_secret_value())
    password = settings.POSTGRES_PASSWORD.get_secret_value()
    auth = quote(settings.POSTGRES_USER, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    return (
        f"postgresql+asyncpg://{auth}@{settings.POSTGRES_HOST}:{settings.POSTGRES_PORT}/"
        f"{quote(settings.POSTGRES_DB, safe='')}"
    )


def database_url_masked(settings: Settings) -> str:
    return mask_url(database_url(settings))


def database_conninfo(settings: Settings) -> str:
    """libpq URL of the main database, for psycopg (the budget guard's one-off query)."""
    return to_libpq_url(database_url(settings))


def checkpointer_conninfo(settings: Settings) -> str:
    """libpq URL for psycopg (the LangGraph checkpointer): its own database or the main one."""
    if settings.CHECKPOINTER_DATABASE_URL is not None:
        return to_libpq_url(settings.CHECKPOINTER_DATABASE_URL.get_secret_value())
    return database_conninfo(settings)


def redis_url(settings: Settings) -> str:
    return settings.REDIS_URL.get_secret_value()


def redis_ssl_cert_reqs(settings: Settings) -> str | None:
    return redis_cert_reqs(redis_url(settings))


def application_name(settings: Settings, service: str | None = None) -> str:
    """``<environment>.<service>``: what pg_stat_activity groups the server's connections by."""
    return f"{settings.ENVIRONMENT}.{service or settings.SERVICE_TYPE}"


def command_timeout(settings: Settings, service: str) -> float | None:
    """The client's deadline on one statement (None for MIGRATE): later than the server's
    statement_timeout, so the server cancels a slow statement cleanly first; this one fires only when
    no answer comes at all (a stalled server or network)."""
    if service == MIGRATE:
        return None
    return settings.DB_STATEMENT_TIMEOUT + settings.DB_COMMAND_TIMEOUT_MARGIN


def checkpointer_operation_timeout(settings: Settings, service: str) -> float:
    """A checkpointer operation's deadline: a checkout may wait LANGGRAPH_POOL_TIMEOUT, its check and
    statements the client deadline (a run is a handful of statements on one connection)."""
    return settings.LANGGRAPH_POOL_TIMEOUT + (
        command_timeout(settings, service) or settings.DB_STATEMENT_TIMEOUT
    )


def session_settings(settings: Settings, service: str) -> dict[str, str]:
    """Server settings every connection of ``service`` starts with (as PostgreSQL reads them), for
    asyncpg's ``server_settings`` and libpq's ``options``, so every pool and one-off connection agrees.

    No statement or idle-in-transaction timeout for MIGRATE (see ``app.topology``). Nothing behind
    PgBouncer: it refuses unknown startup parameters (set them on the role there instead,
    ``ALTER ROLE app SET statement_timeout = '10s'``, and use PgBouncer's own ``tcp_keepalive``).
    """
    if settings.DB_BEHIND_PGBOUNCER:
        return {}
    values = {
        "tcp_keepalives_idle": str(settings.DB_TCP_KEEPALIVES_IDLE),
        "tcp_keepalives_interval": str(TCP_KEEPALIVES_INTERVAL),
        "tcp_keepalives_count": str(TCP_KEEPALIVES_COUNT),
    }
    if service != MIGRATE:
        # At least 1 ms: PostgreSQL reads 0 as "no timeout".
        values["statement_timeout"] = str(max(1, round(settings.DB_STATEMENT_TIMEOUT * 1000)))
        values["idle_in_transaction_session_timeout"] = str(
            round(settings.DB_IDLE_IN_TRANSACTION_TIMEOUT * 1000)
        )
    return values


def asyncpg_connect_args(settings: Settings, service: str) -> dict[str, object]:
    args: dict[str, object] = {
        "timeout": settings.DB_CONNECT_TIMEOUT,
        "command_timeout": command_timeout(settings, service),
        "server_settings": {
            "application_name": application_name(settings, service),
            **session_settings(settings, service),
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
    url = make_url(database_url(settings))
    if settings.DB_BEHIND_PGBOUNCER:
        url = url.update_query_dict({"prepared_statement_cache_size": "0"})
    return url.render_as_string(hide_password=False)


def libpq_params(settings: Settings, service: str) -> dict[str, object]:
    """psycopg connection parameters with the same name, connect deadline and server settings as the
    asyncpg connections, plus client-side TCP keepalives (libpq has them; asyncpg does not)."""
    params: dict[str, object] = {
        "application_name": application_name(settings, service),
        # libpq counts whole seconds (and treats 1 as 2); never 0, which would mean "wait forever".
        "connect_timeout": max(1, math.ceil(settings.DB_CONNECT_TIMEOUT)),
        "keepalives": 1,
        "keepalives_idle": settings.DB_TCP_KEEPALIVES_IDLE,
        "keepalives_interval": TCP_KEEPALIVES_INTERVAL,
        "keepalives_count": TCP_KEEPALIVES_COUNT,
    }
    server = session_settings(settings, service)
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
