"""LangGraph's Postgres saver with a deadline on every operation a graph run makes.

psycopg has no client-side statement deadline, and psycopg_pool's ``check`` and LangGraph's own calls
have none either: against a server that stopped answering they would wait forever. So the pool's check
is bounded, and every saver operation fails with ``CheckpointerTimeout`` once
``app.config.connections.checkpointer_operation_timeout`` has passed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg_pool import AsyncConnectionPool

from app.core.deadline import DeadlineExceeded, run_within


class CheckpointerTimeout(DeadlineExceeded):
    """A checkpointer operation outlived its deadline: the database did not answer."""


def bounded_check(seconds: float) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
    """The pool's pre-checkout check with a deadline: ``check_connection`` itself has none, and a
    connection to a stalled server would hang the checkout past the pool's own ``timeout``."""

    async def check(conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await run_within(
                seconds, "checkpointer check", AsyncConnectionPool.check_connection(conn), CheckpointerTimeout
            )
        except CheckpointerTimeout as error:
            # An exception makes the pool discard this connection and try another (or a new one).
            raise psycopg.OperationalError(str(error)) from error

    return check


class BoundedPostgresSaver(AsyncPostgresSaver):
    """LangGraph's saver with a deadline on every operation a graph run makes (``alist``, history
    browsing only, relies on the server's statement_timeout)."""

    deadline: float = 30.0

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await run_within(
            self.deadline, "checkpointer aget_tuple", super().aget_tuple(config), CheckpointerTimeout
        )

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await run_within(
            self.deadline,
            "checkpointer aput",
            super().aput(config, checkpoint, metadata, new_versions),
            CheckpointerTimeout,
        )

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await run_within(
            self.deadline,
            "checkpointer aput_writes",
            super().aput_writes(config, writes, task_id, task_path),
            CheckpointerTimeout,
        )

    async def adelete_thread(self, thread_id: str) -> None:
        await run_within(
            self.deadline,
            "checkpointer adelete_thread",
            super().adelete_thread(thread_id),
            CheckpointerTimeout,
        )

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await run_within(
            self.deadline,
            "checkpointer aprune",
            super().aprune(thread_ids, strategy=strategy),  # type: ignore[misc]
            CheckpointerTimeout,
        )

    async def aget_delta_channel_history(self, *args: Any, **kwargs: Any) -> Any:
        return await run_within(
            self.deadline,
            "checkpointer aget_delta_channel_history",
            super().aget_delta_channel_history(*args, **kwargs),  # type: ignore[misc]
            CheckpointerTimeout,
        )
