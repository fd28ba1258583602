"""The LangGraph checkpointer and its psycopg connection pool, one per process.

LangGraph's ``AsyncPostgresSaver.from_conn_string`` opens connections with no pool settings at all, so
the factory builds its own ``AsyncConnectionPool``:

* ``min_size`` 2, ``max_size`` from settings (production 20; development sets 10), ``timeout`` so a
  checkout fails fast like the SQLAlchemy pool does;
* the connection options the saver needs: autocommit and dict rows; prepared statements off when the
  database sits behind PgBouncer in transaction mode;
* ``check=AsyncConnectionPool.check_connection``: a connection is verified before it is handed out, so a
  server restart or an idle cut never surfaces as an error in a workflow step;
* ``application_name = <environment>.<service>.langgraph``: pg_stat_activity and the budget audit see
  this pool apart from the service's SQLAlchemy pool.

Like the SQLAlchemy engine it is created lazily in the process that uses it (a workflow worker child,
never a prefork parent), opened explicitly (``open=False`` then ``await pool.open()``), and closed at
shutdown. Only processes that run workflows open it; an API process reports it as not opened.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from app.config.settings import Settings, get_settings
from app.core import metrics
from app.db.engine import configured_service

log = structlog.get_logger("app.orchestrator")


def checkpointer_application_name(settings: Settings, service: str) -> str:
    return settings.application_name(f"{service}.langgraph")


class OrchestratorFactory:
    """Per-process owner of the checkpointer pool (the guide keeps it at class level; so do we, keyed
    by pid so that a forked child never uses its parent's sockets)."""

    _pool: AsyncConnectionPool | None = None
    _saver: AsyncPostgresSaver | None = None
    _pid: int | None = None
    _service: str | None = None

    @classmethod
    def build_pool(cls, settings: Settings, service: str) -> AsyncConnectionPool:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "application_name": checkpointer_application_name(settings, service),
            "connect_timeout": max(1, int(settings.DB_CONNECT_TIMEOUT)),
        }
        if settings.DB_BEHIND_PGBOUNCER:
            kwargs["prepare_threshold"] = None  # never prepare: PgBouncer transaction mode
        return AsyncConnectionPool(
            conninfo=settings.checkpointer_conninfo,
            min_size=settings.LANGGRAPH_POOL_MIN_SIZE,
            max_size=settings.LANGGRAPH_POOL_MAX_SIZE,
            timeout=settings.LANGGRAPH_POOL_TIMEOUT,
            max_idle=600,
            kwargs=kwargs,
            check=AsyncConnectionPool.check_connection,
            open=False,
            name=f"langgraph-{service}",
        )

    @classmethod
    async def get_pool(cls, service: str | None = None) -> AsyncConnectionPool:
        if cls._pool is not None and cls._pid != os.getpid():
            cls._pool = cls._saver = None  # inherited across fork: not ours to use or close
        if cls._pool is None:
            settings = get_settings()
            service = service or configured_service()
            pool = cls.build_pool(settings, service)
            await pool.open(wait=True, timeout=settings.LANGGRAPH_POOL_TIMEOUT)
            cls._pool, cls._pid, cls._service = pool, os.getpid(), service
            log.info(
                "langgraph_connection_pool_configured",
                environment=settings.ENVIRONMENT,
                min_size=settings.LANGGRAPH_POOL_MIN_SIZE,
                max_size=settings.LANGGRAPH_POOL_MAX_SIZE,
                application_name=checkpointer_application_name(settings, service),
            )
        return cls._pool

    @classmethod
    async def get_checkpointer(cls, service: str | None = None) -> AsyncPostgresSaver:
        pool = await cls.get_pool(service)
        if cls._saver is None:
            cls._saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        return cls._saver

    @classmethod
    def stats(cls) -> dict[str, Any]:
        """Live figures for /health and Prometheus; ``opened: false`` in processes that never ran a graph."""
        settings = get_settings()
        base = {
            "min_size": settings.LANGGRAPH_POOL_MIN_SIZE,
            "max_size": settings.LANGGRAPH_POOL_MAX_SIZE,
        }
        if cls._pool is None or cls._pid != os.getpid():
            return {"opened": False, **base, "pool_size": 0, "in_use": 0, "available": 0, "waiting": 0}
        raw = cls._pool.get_stats()
        size, available = raw.get("pool_size", 0), raw.get("pool_available", 0)
        stats = {
            "opened": True,
            **base,
            "pool_size": size,
            "in_use": size - available,
            "available": available,
            "waiting": raw.get("requests_waiting", 0),
        }
        service = cls._service or configured_service()
        metrics.LANGGRAPH_POOL_SIZE.labels(service).set(size)
        metrics.LANGGRAPH_POOL_IN_USE.labels(service).set(size - available)
        metrics.LANGGRAPH_POOL_MAX.labels(service).set(settings.LANGGRAPH_POOL_MAX_SIZE)
        return stats

    @classmethod
    async def close(cls) -> None:
        pool, cls._pool, cls._saver = cls._pool, None, None
        if pool is not None and cls._pid == os.getpid():
            await pool.close()


async def setup_checkpointer_tables() -> None:
    """Create/upgrade LangGraph's tables (prestart step). Its migrations include CREATE INDEX
    CONCURRENTLY, which needs autocommit: a single plain connection, closed afterwards."""
    from psycopg import AsyncConnection

    settings = get_settings()
    async with await AsyncConnection.connect(
        settings.checkpointer_conninfo,
        autocommit=True,
        row_factory=dict_row,
        application_name=settings.application_name("migrate"),
    ) as conn:
        await AsyncPostgresSaver(conn).setup()  # type: ignore[arg-type]
