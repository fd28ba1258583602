"""One SQLAlchemy async engine (asyncpg) per process, built lazily and never inherited across fork.

Why lazy and per process: a pool created before ``fork`` is shared by the children, and two processes
talking over one socket corrupt each other's protocol state (the classic Celery prefork bug). So nothing
connects at import time; ``get_engine()`` builds the engine on first use *in the calling process*, and
if it finds an engine built by a parent process it drops it without closing the parent's sockets
(``dispose(close=False)``, SQLAlchemy's documented recipe for fork).

Every connection sets ``application_name`` to ``<environment>.<service>``, so the guide's
pg_stat_activity queries, the budget audit and the Prometheus labels all name the same services.

Every connection also carries deadlines (``Settings.session_settings`` / ``command_timeout``): the
server's ``statement_timeout`` and ``idle_in_transaction_session_timeout``, server-side TCP keepalives,
and asyncpg's ``command_timeout``, the one that still fires when the server never answers. A statement
that hits the client deadline leaves its connection mid-protocol, so ``install_timeout_invalidation``
makes SQLAlchemy discard that connection instead of handing it out again.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from app.config.settings import TCP_KEEPALIVES_COUNT, TCP_KEEPALIVES_INTERVAL, Settings, get_settings
from app.db.liveness import install_idle_ping
from app.db.pool_metrics import PoolInstrumentation, instrument_pool

log = structlog.get_logger("app.db")


def connect_args(settings: Settings, service: str) -> dict[str, object]:
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


def install_timeout_invalidation(engine: AsyncEngine) -> None:
    """Discard a connection whose statement outlived a deadline, at once.

    asyncpg raises a plain ``TimeoutError`` at its ``command_timeout``, which SQLAlchemy does not
    recognise as a disconnect: it would roll the connection back (one more round trip to a server that
    does not answer) and pool it while the protocol still waits for the timed-out statement's reply.
    Marked as a disconnect, the connection is replaced instead. Only this one: a slow answer says nothing
    about the others (the idle ping checks them when they are next used). A cancellation (the request's
    deadline, ``app.api.deadline``) is a disconnect to SQLAlchemy already.

    Either way the connection is then terminated, not closed: SQLAlchemy's graceful close would first
    wait (up to 2 s) for asyncpg to deliver a cancel request to the very server that is not answering,
    and the client's 503 would wait with it.
    """

    @event.listens_for(engine.sync_engine, "handle_error")
    def _timed_out(context: ExceptionContext) -> None:
        if isinstance(context.original_exception, TimeoutError):
            context.is_disconnect = True
            context.invalidate_pool_on_disconnect = False

    @event.listens_for(engine.sync_engine.pool, "invalidate")
    def _terminate(dbapi_connection: Any, _record: Any, error: BaseException | None) -> None:
        # The idle ping's DisconnectionError carries the ping's TimeoutError as its cause.
        cause = getattr(error, "__cause__", None)
        if isinstance(error, TimeoutError | asyncio.CancelledError) or isinstance(cause, TimeoutError):
            driver = getattr(dbapi_connection, "driver_connection", None)
            if driver is not None and not driver.is_closed():
                driver.terminate()


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


def build_engine(settings: Settings, service: str) -> tuple[AsyncEngine, PoolInstrumentation | None]:
    """A pooled engine sized from settings, instrumented unless DB_POOL_METRICS_ENABLED is false."""
    sizing = settings.pool(service)
    if settings.DB_POOL_CLASS == "null":
        engine = build_unpooled_engine(settings, service)
    else:
        engine = create_async_engine(
            engine_url(settings),
            pool_size=sizing.pool_size,
            max_overflow=sizing.max_overflow,
            pool_timeout=settings.DB_POOL_TIMEOUT,
            pool_recycle=settings.DB_POOL_RECYCLE,
            # Validation is app.db.liveness's: after an idle spell only, not on every checkout.
            pool_pre_ping=False,
            # FIFO reuse keeps every pooled connection busy now and then, so none sits idle long
            # enough to be dropped by a NAT or a server timeout. (Waiters queue in order either way.)
            pool_use_lifo=False,
            connect_args=connect_args(settings, service),
        )
        if settings.DB_POOL_PRE_PING:
            install_idle_ping(engine, settings.DB_POOL_PING_IDLE_SECONDS, settings.DB_CONNECT_TIMEOUT)
    install_timeout_invalidation(engine)
    instrumentation = instrument_pool(engine, service, settings) if settings.DB_POOL_METRICS_ENABLED else None
    log.info(
        "db_engine_created",
        pool_service=service,
        url=settings.database_url_masked,
        pool_size=sizing.pool_size,
        max_overflow=sizing.max_overflow,
        pool_timeout=settings.DB_POOL_TIMEOUT,
        application_name=settings.application_name(service),
        pid=os.getpid(),
    )
    return engine, instrumentation


def build_unpooled_engine(settings: Settings, service: str) -> AsyncEngine:
    """For one-shot tools (migrations, CLIs): no pool to size, nothing left open afterwards."""
    engine = create_async_engine(
        engine_url(settings), poolclass=NullPool, connect_args=connect_args(settings, service)
    )
    install_timeout_invalidation(engine)
    return engine


def direct_connection(settings: Settings, service: str) -> psycopg.Connection:
    """One synchronous autocommit connection for a one-off step (the budget guard, the migration
    lock): named like every other connection, bounded by DB_CONNECT_TIMEOUT, never pooled."""
    return psycopg.connect(settings.database_conninfo, autocommit=True, **libpq_params(settings, service))


@dataclass
class _ProcessEngine:
    pid: int
    service: str
    settings: Settings
    engine: AsyncEngine
    instrumentation: PoolInstrumentation | None
    sessionmaker: async_sessionmaker


_current: _ProcessEngine | None = None
_service_override: str | None = None


def set_service(service: str) -> None:
    """Name the service this process's engine is for (a Celery child names its queue's service).

    Must be called before the first ``get_engine()`` in the process to take effect.
    """
    global _service_override
    _service_override = service


def configured_service() -> str:
    """The service this process is (set_service, else SERVICE_TYPE), without building an engine."""
    return _service_override or get_settings().SERVICE_TYPE


def _state() -> _ProcessEngine:
    global _current
    if _current is not None and _current.pid != os.getpid():
        # Inherited from the parent across fork: forget it, leave the parent's sockets alone.
        _current.engine.sync_engine.dispose(close=False)
        _current = None
    if _current is None:
        settings = get_settings()
        service = configured_service()
        engine, instrumentation = build_engine(settings, service)
        _current = _ProcessEngine(
            pid=os.getpid(),
            service=service,
            settings=settings,
            engine=engine,
            instrumentation=instrumentation,
            sessionmaker=async_sessionmaker(engine, expire_on_commit=False),
        )
    return _current


def get_engine() -> AsyncEngine:
    return _state().engine


def get_sessionmaker() -> async_sessionmaker:
    return _state().sessionmaker


def current_service() -> str:
    return _state().service


def engine_is_built() -> bool:
    return _current is not None and _current.pid == os.getpid()


async def dispose_engine() -> None:
    """Close this process's connections (FastAPI lifespan end, Celery worker_process_shutdown)."""
    global _current
    if _current is None:
        return
    state, _current = _current, None
    if state.pid == os.getpid():
        await state.engine.dispose()
    else:
        state.engine.sync_engine.dispose(close=False)


@dataclass(frozen=True)
class PoolSnapshot:
    """The guide's /health pool figures, consistent by construction."""

    pool_size: int
    checked_out: int
    overflow: int
    max_overflow: int
    max_connections: int
    usage_ratio: float


def pool_snapshot() -> PoolSnapshot:
    state = _state()
    pool = state.engine.sync_engine.pool
    sizing = state.settings.pool(state.service)
    max_connections = sizing.max_connections
    if not hasattr(pool, "overflow"):  # NullPool (DB_POOL_CLASS=null): nothing pooled to report
        return PoolSnapshot(sizing.pool_size, 0, 0, sizing.max_overflow, max_connections, 0.0)
    checked_out = min(pool.checkedout(), max_connections)
    return PoolSnapshot(
        pool_size=sizing.pool_size,
        checked_out=checked_out,
        # QueuePool.overflow() starts at -pool_size; only connections beyond pool_size are overflow.
        overflow=max(0, pool.overflow()),
        max_overflow=sizing.max_overflow,
        max_connections=max_connections,
        usage_ratio=round(100 * checked_out / max_connections, 1),
    )
