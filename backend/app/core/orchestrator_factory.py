"""The LangGraph checkpointer and its psycopg connection pool, one per process.

LangGraph's ``AsyncPostgresSaver.from_conn_string`` opens connections with no pool settings at all, so
the factory builds its own ``AsyncConnectionPool``:

* ``min_size``, ``max_size`` and ``timeout`` from settings (LANGGRAPH_POOL_*), so a checkout fails fast
  like the SQLAlchemy pool's does;
* the connection options the saver needs: autocommit and dict rows; prepared statements off when the
  database sits behind PgBouncer in transaction mode;
* ``check=AsyncConnectionPool.check_connection``: a connection is verified before it is handed out, so a
  server restart or an idle cut never surfaces as an error in a workflow step;
* ``application_name = <environment>.<service>.langgraph``: pg_stat_activity and the budget audit see
  this pool apart from the service's SQLAlchemy pool;
* the same deadlines as the SQLAlchemy connections (``app.config.connections.libpq_params``): connect_timeout,
  TCP keepalives, and ``statement_timeout`` / ``idle_in_transaction_session_timeout`` through libpq's
  ``options``. psycopg has no client-side statement deadline, and psycopg_pool's ``check`` and
  LangGraph's own calls have none either: against a server that stopped answering they would wait
  forever. So the check is bounded, and every saver operation (``BoundedPostgresSaver``, in
  ``app.core.checkpointer_saver``) fails with ``CheckpointerTimeout`` once
  ``checkpointer_operation_timeout`` has passed;
* a connection the server refuses for want of slots (53300) is counted in
  ``db_allocation_exhausted_total{service="<service>.langgraph"}``: the pool retries in the background
  and its callers only ever see a ``PoolTimeout``, so the connect itself is where the refusal shows.

Like the SQLAlchemy engine it belongs to the process that uses it (``app.runtime``): a workflow worker
child opens it explicitly (``open=False`` then ``await pool.open()``) on its first graph run and closes
it at shutdown; an API process reports it as not opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import structlog
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from app import runtime
from app.config.connections import (
    application_name,
    checkpointer_conninfo,
    checkpointer_operation_timeout,
    libpq_params,
    refused_for_slots,
)
from app.config.settings import Settings, get_settings
from app.core import metrics
from app.core.checkpointer_saver import BoundedPostgresSaver, bounded_check
from app.topology import MIGRATE

log = structlog.get_logger("app.orchestrator")
T = TypeVar("T")


def checkpointer_service(service: str) -> str:
    """How a service's checkpointer pool is named (application_name ``<environment>.<this>``, metric
    labels), apart from its SQLAlchemy pool: the audit and the fleet page tell them apart by it."""
    return f"{service}.langgraph"


def checkpointer_application_name(settings: Settings, service: str) -> str:
    return application_name(settings, checkpointer_service(service))


def refusal_counting_connection(settings: Settings, service: str) -> type[psycopg.AsyncConnection[Any]]:
    """The pool's connection class: psycopg's, counting the connects the server refuses with 53300."""
    refused = metrics.DB_ALLOCATION_EXHAUSTED.labels(settings.ENVIRONMENT, checkpointer_service(service))

    class RefusalCountingConnection(psycopg.AsyncConnection):  # type: ignore[type-arg]
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().connect(*args, **kwargs)
            except psycopg.OperationalError as error:
                if refused_for_slots(error):
                    refused.inc()
                raise

    return RefusalCountingConnection


@dataclass(frozen=True)
class CheckpointerStats:
    """What /health shows and what the gauges publish; ``opened`` is false where no graph ever ran."""

    opened: bool
    min_size: int
    max_size: int
    pool_size: int = 0
    in_use: int = 0
    available: int = 0
    waiting: int = 0


class OrchestratorFactory:
    """Builds and owns one process's checkpointer pool and the saver on top of it.

    ``for_this_process()`` gives this process's factory, opened on first use and owned by
    ``app.runtime`` like the engine: a workflow worker child opens it with its first graph run, never
    a prefork parent, and an API process never opens one at all.
    """

    def __init__(self, settings: Settings, service: str) -> None:
        self.settings = settings
        self.service = service
        self.pool = self.build_pool(settings, service)
        self.saver = BoundedPostgresSaver(self.pool)  # type: ignore[arg-type]
        self.saver.deadline = checkpointer_operation_timeout(settings, service)

    @staticmethod
    def build_pool(settings: Settings, service: str) -> AsyncConnectionPool:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            **libpq_params(settings, checkpointer_service(service)),
        }
        if settings.DB_BEHIND_PGBOUNCER:
            kwargs["prepare_threshold"] = None  # never prepare: PgBouncer transaction mode
        return AsyncConnectionPool(
            conninfo=checkpointer_conninfo(settings),
            min_size=settings.LANGGRAPH_POOL_MIN_SIZE,
            max_size=settings.LANGGRAPH_POOL_MAX_SIZE,
            timeout=settings.LANGGRAPH_POOL_TIMEOUT,
            max_idle=600,
            kwargs=kwargs,
            check=bounded_check(settings.DB_CONNECT_TIMEOUT),
            connection_class=refusal_counting_connection(settings, service),
            open=False,
            name=f"langgraph-{service}",
        )

    async def open(self) -> OrchestratorFactory:
        await self.pool.open(wait=True, timeout=self.settings.LANGGRAPH_POOL_TIMEOUT)
        log.info(
            "langgraph_connection_pool_configured",
            environment=self.settings.ENVIRONMENT,
            min_size=self.settings.LANGGRAPH_POOL_MIN_SIZE,
            max_size=self.settings.LANGGRAPH_POOL_MAX_SIZE,
            application_name=checkpointer_application_name(self.settings, self.service),
        )
        return self

    async def close(self) -> None:
        await self.pool.close()

    def stats(self) -> CheckpointerStats:
        raw = self.pool.get_stats()
        size, available = raw.get("pool_size", 0), raw.get("pool_available", 0)
        return CheckpointerStats(
            opened=True,
            min_size=self.settings.LANGGRAPH_POOL_MIN_SIZE,
            max_size=self.settings.LANGGRAPH_POOL_MAX_SIZE,
            pool_size=size,
            in_use=size - available,
            available=available,
            waiting=raw.get("requests_waiting", 0),
        )

    @classmethod
    async def for_this_process(cls) -> OrchestratorFactory:
        return await runtime.current().open(
            _RUNTIME_KEY,
            lambda: cls(get_settings(), runtime.current().service).open(),
            close=_close,
            abandon=_abandon,
        )


_RUNTIME_KEY = "langgraph.checkpointer"


async def _close(factory: OrchestratorFactory) -> None:
    await factory.close()


def _abandon(_factory: OrchestratorFactory) -> None:
    """Inherited across fork: the pool's sockets and worker threads are the parent's; just forget it."""


async def get_checkpointer() -> BoundedPostgresSaver:
    """This process's saver, its pool opened on first use."""
    return (await OrchestratorFactory.for_this_process()).saver


def checkpointer_stats() -> CheckpointerStats:
    """This process's checkpointer pool figures; reading them opens nothing."""
    factory: OrchestratorFactory | None = runtime.current().peek(_RUNTIME_KEY)
    if factory is not None:
        return factory.stats()
    settings = get_settings()
    return CheckpointerStats(
        opened=False, min_size=settings.LANGGRAPH_POOL_MIN_SIZE, max_size=settings.LANGGRAPH_POOL_MAX_SIZE
    )


def publish_checkpointer_metrics(stats: CheckpointerStats, service: str) -> None:
    """The checkpointer pool gauges (a workflow worker child publishes them after each task)."""
    if not stats.opened:
        return
    metrics.LANGGRAPH_POOL_SIZE.labels(service).set(stats.pool_size)
    metrics.LANGGRAPH_POOL_IN_USE.labels(service).set(stats.in_use)
    metrics.LANGGRAPH_POOL_MAX.labels(service).set(stats.max_size)


async def setup_checkpointer_tables() -> None:
    """Create/upgrade LangGraph's tables (prestart step). Its migrations include CREATE INDEX
    CONCURRENTLY, which needs autocommit: a single plain connection, closed afterwards."""
    from psycopg import AsyncConnection

    settings = get_settings()
    async with await AsyncConnection.connect(
        checkpointer_conninfo(settings),
        autocommit=True,
        row_factory=dict_row,
        **libpq_params(settings, MIGRATE),
    ) as conn:
        await AsyncPostgresSaver(conn).setup()  # type: ignore[arg-type]
