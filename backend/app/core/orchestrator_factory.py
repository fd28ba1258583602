"""The LangGraph checkpointer's psycopg connection pool and its saver, one per process.

LangGraph's ``AsyncPostgresSaver.from_conn_string`` opens connections with no pool settings at all, so
the factory builds its own ``AsyncConnectionPool``: sized and timed by LANGGRAPH_POOL_*, with the
saver's connection options (autocommit, dict rows, no prepared statements behind PgBouncer), the same
deadlines as the SQLAlchemy connections (``app.config.connections.libpq_params``), a bounded check
before each checkout, and ``application_name = <environment>.<service>.langgraph`` so the audit sees it
apart. A connect the server refuses for want of slots (53300) is counted here: the pool retries in the
background, so its callers would only ever see a ``PoolTimeout``.

Like the SQLAlchemy engine it belongs to the process that uses it (``app.runtime``): a workflow worker
child opens it on its first graph run and closes it at shutdown; an API process never opens one. Its
figures and gauges are ``app.core.checkpointer_metrics``'s; its tables are created by the prestart
step (``app.db.prestart``).
"""

from __future__ import annotations

from typing import Any

import psycopg
import structlog
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
from app.core.checkpointer_metrics import CheckpointerStats, stats_from_pool
from app.core.checkpointer_saver import BoundedPostgresSaver, bounded_check

log = structlog.get_logger("app.orchestrator")


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
        settings = self.settings
        return stats_from_pool(
            self.pool.get_stats(), settings.LANGGRAPH_POOL_MIN_SIZE, settings.LANGGRAPH_POOL_MAX_SIZE
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
