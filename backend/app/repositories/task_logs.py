"""Reads and batch writes of task_logs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import TaskLog
from app.db.reader import Reader, driver_statement

_LOGS = TaskLog.__table__
# The API's reads, built and compiled once (constructing a statement per request cost more than executing
# it), for asyncpg, which executes them (app.db.reader). A page, newest first, with the total as an
# uncorrelated subquery PostgreSQL evaluates once.
_ALL = select(func.count()).select_from(_LOGS)
_FOR_TASK = _ALL.where(_LOGS.c.task_id == bindparam("task_id"))
_NEWEST_FIRST = (_LOGS.c.created_at.desc(), _LOGS.c.id.desc())
_COUNT = driver_statement(_ALL)
_COUNT_FOR_TASK = driver_statement(_FOR_TASK)
_PAGE = driver_statement(
    select(_LOGS, _ALL.scalar_subquery().label("total"))
    .order_by(*_NEWEST_FIRST)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
_PAGE_FOR_TASK = driver_statement(
    select(_LOGS, _FOR_TASK.scalar_subquery().label("total"))
    .where(_LOGS.c.task_id == bindparam("task_id"))
    .order_by(*_NEWEST_FIRST)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)


class TaskLogRepository:
    """Writes on a session (an instance); the API's read on a ``read()`` connection (a static method)."""

    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    async def add_many(self, events: Sequence[dict[str, Any]]) -> int:
        """One INSERT for a whole batch: one connection and one round trip, not one per line."""
        if not events:
            return 0
        await self.session.execute(insert(TaskLog), list(events))
        return len(events)

    @staticmethod
    async def list(
        reader: Reader, *, limit: int, offset: int, task_id: str | None = None
    ) -> tuple[list[asyncpg.Record], int]:
        """A page, newest first, and the total, in one statement (one round trip). Past the last page
        no row carries the total, and only then does a second statement count."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if task_id is not None:
            params["task_id"] = task_id
        page, count = (_PAGE, _COUNT) if task_id is None else (_PAGE_FOR_TASK, _COUNT_FOR_TASK)
        rows = await reader.rows(page, params)
        if rows:
            return rows, int(rows[0]["total"])
        return [], 0 if offset == 0 else int(await reader.value(count, params) or 0)
