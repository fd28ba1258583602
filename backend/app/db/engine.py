"""The SQLAlchemy async engine (asyncpg): a settings-free factory, and this process's engine.

``build_engine(options)`` makes an engine from plain values (``EngineOptions``); ``engine_options(settings,
service)`` is the one place the settings are read for it. ``get_engine()`` is this process's, built on
first use and owned by ``app.runtime`` (made in the process that uses it, abandoned without closing the
parent's sockets after fork, disposed at shutdown).

Every connection sets ``application_name`` to ``<environment>.<service>``, so pg_stat_activity, the
budget audit and the Prometheus labels all name the same services.

Every connection also carries deadlines (``app.config.connections``, in the connect arguments): the
server's ``statement_timeout`` and ``idle_in_transaction_session_timeout``, server-side TCP keepalives,
and asyncpg's ``command_timeout``, the one that still fires when the server never answers. A statement
that hits the client deadline leaves its connection mid-protocol, so ``install_timeout_invalidation``
makes SQLAlchemy discard that connection instead of handing it out again.

A connection the server refuses for want of slots (SQLSTATE 53300: the allocation's cap, or the
server's max_connections) is counted in ``db_allocation_exhausted_total`` by ``count_refusals``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from app import runtime
from app.config.connections import (
    application_name,
    asyncpg_connect_args,
    database_conninfo,
    database_url_masked,
    engine_url,
    libpq_params,
)
from app.config.settings import Settings, get_settings
from app.core import metrics
from app.db.errors import is_allocation_exhausted
from app.db.liveness import install_idle_ping
from app.db.pool_metrics import UsageAlerts, instrument_pool
from app.sizing import pool_sizing

log = structlog.get_logger("app.db")


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


def count_refusals(engine: AsyncEngine, environment: str, service: str) -> None:
    """Count every connection attempt the server refuses with 53300, through SQLAlchemy's
    ``handle_error``, which sees a failed pool connect before any caller does."""
    # Created now, at 0: increase() over a series that appears with its first refusal misses that one.
    refused = metrics.DB_ALLOCATION_EXHAUSTED.labels(environment, service)

    @event.listens_for(engine.sync_engine, "handle_error")
    def _refused(context: ExceptionContext) -> None:
        if is_allocation_exhausted(context.original_exception):
            refused.inc()


@dataclass(frozen=True)
class EngineOptions:
    """Everything the engine factory needs, as plain values."""

    url: str
    url_masked: str  # for the log
    environment: str
    service: str
    application_name: str
    connect_args: dict[str, Any]
    pooled: bool  # False: NullPool (DB_POOL_CLASS=null)
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    ping_timeout: float
    ping_idle_seconds: float | None = None  # validate after this much idle (app.db.liveness); None: never
    alerts: UsageAlerts | None = None  # pool metrics and usage events; None: not instrumented


def engine_options(settings: Settings, service: str) -> EngineOptions:
    """The settings, read once, as the factory's arguments for ``service``."""
    sizing = pool_sizing(settings, service)
    return EngineOptions(
        url=engine_url(settings),
        url_masked=database_url_masked(settings),
        environment=settings.ENVIRONMENT,
        service=service,
        application_name=application_name(settings, service),
        connect_args=asyncpg_connect_args(settings, service),
        pooled=settings.DB_POOL_CLASS != "null",
        pool_size=sizing.pool_size,
        max_overflow=sizing.max_overflow,
        pool_timeout=settings.DB_POOL_TIMEOUT,
        pool_recycle=settings.DB_POOL_RECYCLE,
        ping_idle_seconds=settings.DB_POOL_PING_IDLE_SECONDS if settings.DB_POOL_PRE_PING else None,
        ping_timeout=settings.DB_CONNECT_TIMEOUT,
        alerts=UsageAlerts(
            high_ratio=settings.DB_POOL_HIGH_USAGE_RATIO,
            critical_ratio=settings.DB_POOL_CRITICAL_USAGE_RATIO,
            log_interval=settings.DB_POOL_USAGE_LOG_INTERVAL,
            leak_threshold=settings.DB_LEAK_DETECTION_THRESHOLD,
        )
        if settings.DB_POOL_METRICS_ENABLED
        else None,
    )


def build_engine(options: EngineOptions) -> AsyncEngine:
    """A pooled engine of ``options.service``, instrumented unless ``options.alerts`` is None."""
    service = options.service
    if not options.pooled:
        engine = build_unpooled_engine(options)
    else:
        engine = create_async_engine(
            options.url,
            pool_size=options.pool_size,
            max_overflow=options.max_overflow,
            pool_timeout=options.pool_timeout,
            pool_recycle=options.pool_recycle,
            # Validation is app.db.liveness's: after an idle spell only, not on every checkout.
            pool_pre_ping=False,
            # Which idle connection is reused (waiters are served by the pool's queue either way):
            # FIFO rotates through all of them, so none sits idle long enough for a NAT or the
            # server to drop it unnoticed.
            pool_use_lifo=False,
            connect_args=options.connect_args,
        )
        if options.ping_idle_seconds is not None:
            install_idle_ping(engine, options.ping_idle_seconds, options.ping_timeout)
        count_refusals(engine, options.environment, service)
    install_timeout_invalidation(engine)
    if options.alerts is not None:
        instrument_pool(engine, service, options.pool_size, options.max_overflow, options.alerts)
    log.info(
        "db_engine_created",
        pool_service=service,
        url=options.url_masked,
        pool_size=options.pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=options.pool_timeout,
        application_name=options.application_name,
        pid=os.getpid(),
    )
    return engine


def build_unpooled_engine(options: EngineOptions) -> AsyncEngine:
    """For one-shot tools (migrations, CLIs): no pool to size, nothing left open afterwards."""
    engine = create_async_engine(options.url, poolclass=NullPool, connect_args=options.connect_args)
    install_timeout_invalidation(engine)
    count_refusals(engine, options.environment, options.service)
    return engine


def direct_connection(settings: Settings, service: str) -> psycopg.Connection:
    """One synchronous autocommit connection for a one-off step (the budget guard, the migration
    lock): named like every other connection, bounded by DB_CONNECT_TIMEOUT, never pooled."""
    return psycopg.connect(database_conninfo(settings), autocommit=True, **libpq_params(settings, service))


@dataclass(frozen=True)
class ProcessEngine:
    """This process's engine, with the options it was built from."""

    options: EngineOptions
    engine: AsyncEngine
    sessionmaker: async_sessionmaker

    @property
    def service(self) -> str:
        return self.options.service


def _build_process_engine() -> ProcessEngine:
    options = engine_options(get_settings(), runtime.current().service)
    engine = build_engine(options)
    return ProcessEngine(options, engine, async_sessionmaker(engine, expire_on_commit=False))


async def _dispose(state: ProcessEngine) -> None:
    await state.engine.dispose()


def _abandon(state: ProcessEngine) -> None:
    state.engine.sync_engine.dispose(close=False)  # the parent's sockets stay the parent's


def process_engine() -> ProcessEngine:
    return runtime.current().get("db.engine", _build_process_engine, close=_dispose, abandon=_abandon)


def get_engine() -> AsyncEngine:
    return process_engine().engine


def get_sessionmaker() -> async_sessionmaker:
    return process_engine().sessionmaker


@dataclass(frozen=True)
class PoolSnapshot:
    """The /health pool figures (the guide's names), consistent by construction."""

    pool_size: int
    checked_out: int
    overflow: int
    max_overflow: int
    max_connections: int
    usage_ratio: float


def pool_snapshot() -> PoolSnapshot:
    state = process_engine()
    pool = state.engine.sync_engine.pool
    sizing = state.options
    max_connections = sizing.pool_size + sizing.max_overflow
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
