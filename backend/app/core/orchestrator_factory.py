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
  this pool apart from the service's SQLAlchemy pool;
* the same deadlines as the SQLAlchemy connections (``app.db.engine.libpq_params``): connect_timeout,
  TCP keepalives, and ``statement_timeout`` / ``idle_in_transaction_session_timeout`` through libpq's
  ``options``. psycopg has no client-side statement deadline, and psycopg_pool's ``check`` and
  LangGraph's own calls have none either: against a server that stopped answering they would wait
  forever. So the check is bounded, and every saver operation (``BoundedPostgresSaver``) fails with
  ``CheckpointerTimeout`` once ``Settings.checkpointer_operation_timeout`` has passed.

Like the SQLAlchemy engine it is created lazily in the process that uses it (a workflow worker child,
never a prefork parent), opened explicitly (``open=False`` then ``await pool.open()``), and closed at
shutdown. Only processes that run workflows open it; an API process reports it as not opened.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import psycopg
import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from app.config.settings import Settings, get_settings
from app.core import metrics
from app.db.engine import configured_service, libpq_params

log = structlog.get_logger("app.orchestrator")
T = TypeVar("T")


def checkpointer_service(service: str) -> str:
    return f"{service}.langgraph"


def checkpointer_application_name(settings: Settings, service: str) -> str:
    return settings.application_name(checkpointer_service(service))


class CheckpointerTimeout(TimeoutError):
    """A checkpointer operation outlived its deadline: the database did not answer (app.db.errors counts
    it, like every TimeoutError, as "database unavailable": a task retries, the API answers 503)."""


# Operations given up on, still unwinding (see run_within); referenced so they are not collected early.
_abandoned: set[asyncio.Task[Any]] = set()


async def run_within(seconds: float, what: str, operation: Coroutine[Any, Any, T]) -> T:
    """``operation``'s result, or ``CheckpointerTimeout`` after ``seconds``, on time.

    Not ``asyncio.wait_for``: that waits for the cancelled operation to finish, and psycopg, cancelled
    mid-query, first sends the server a cancel request and then waits for the query to end, up to
    5 + 5 s against a server that does not answer, before closing the connection. The caller gets its
    answer at the deadline; the cancelled operation unwinds in the background (bounded by psycopg),
    and its connection, closed mid-query, is discarded by the pool rather than reused.
    """
    task = asyncio.ensure_future(operation)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)
    raise CheckpointerTimeout(f"{what} got no answer from the database within {seconds:g} s")


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled() and task.exception() is not None:  # retrieved: no "never retrieved" noise
        log.debug("checkpointer_abandoned_operation_failed", error_type=type(task.exception()).__name__)


def bounded_check(seconds: float) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
    """The pool's pre-checkout check with a deadline: ``check_connection`` itself has none, and a
    connection to a stalled server would hang the checkout past the pool's own ``timeout``."""

    async def check(conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await run_within(seconds, "checkpointer check", AsyncConnectionPool.check_connection(conn))
        except CheckpointerTimeout as error:
            # An exception makes the pool discard this connection and try another (or a new one).
            raise psycopg.OperationalError(str(error)) from error

    return check


class BoundedPostgresSaver(AsyncPostgresSaver):
    """LangGraph's saver with a deadline on every operation a graph run makes (``alist``, history
    browsing only, relies on the server's statement_timeout)."""

    deadline: float = 30.0

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await run_within(self.deadline, "checkpointer aget_tuple", super().aget_tuple(config))

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await run_within(
            self.deadline, "checkpointer aput", super().aput(config, checkpoint, metadata, new_versions)
        )

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await run_within(
            self.deadline, "checkpointer aput_writes", super().aput_writes(config, writes, task_id, task_path)
        )

    async def adelete_thread(self, thread_id: str) -> None:
        await run_within(self.deadline, "checkpointer adelete_thread", super().adelete_thread(thread_id))

    async def aget_delta_channel_history(self, *args: Any, **kwargs: Any) -> Any:
        return await run_within(
            self.deadline,
            "checkpointer aget_delta_channel_history",
            super().aget_delta_channel_history(*args, **kwargs),  # type: ignore[misc]
        )


class OrchestratorFactory:
    """Per-process owner of the checkpointer pool (the guide keeps it at class level; so do we, keyed
    by pid so that a forked child never uses its parent's sockets)."""

    _pool: AsyncConnectionPool | None = None
    _saver: BoundedPostgresSaver | None = None
    _pid: int | None = None
    _service: str | None = None

    @classmethod
    def build_pool(cls, settings: Settings, service: str) -> AsyncConnectionPool:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            **libpq_params(settings, checkpointer_service(service)),
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
            check=bounded_check(settings.DB_CONNECT_TIMEOUT),
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
    async def get_checkpointer(cls, service: str | None = None) -> BoundedPostgresSaver:
        pool = await cls.get_pool(service)
        if cls._saver is None:
            saver = BoundedPostgresSaver(pool)  # type: ignore[arg-type]
            service = cls._service or configured_service()
            saver.deadline = get_settings().checkpointer_operation_timeout(service)
            cls._saver = saver
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
        **libpq_params(settings, "migrate"),
    ) as conn:
        await AsyncPostgresSaver(conn).setup()  # type: ignore[arg-type]
