"""Reads and batch writes of task_logs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import RowMapping, bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import TaskLog

_LOGS = TaskLog.__table__
# The API's reads, built once: constructing a statement per request cost more than executing it.
# A page, newest first, with the total as an uncorrelated subquery PostgreSQL evaluates once.
_COUNT = select(func.count()).select_from(_LOGS)
_COUNT_FOR_TASK = _COUNT.where(_LOGS.c.task_id == bindparam("task_id"))
_NEWEST_FIRST = (_LOGS.c.created_at.desc(), _LOGS.c.id.desc())
_PAGE = (
    select(_LOGS, _COUNT.scalar_subquery().label("total"))
    .order_by(*_NEWEST_FIRST)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
_PAGE_FOR_TASK = (
    select(_LOGS, _COUNT_FOR_TASK.scalar_subquery().label("total"))
    .where(_LOGS.c.task_id == bindparam("task_id"))
    .order_by(*_NEWEST_FIRST)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)


class TaskLogRepository:
    """Core statements, so it works on a session (writes) and on a read connection alike."""

    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    async def add_many(self, events: Sequence[dict[str, Any]]) -> int:
        """One INSERT for a whole batch: one connection and one round trip, not one per line."""
        if not events:
            return 0
        await self.session.execute(insert(TaskLog), list(events))
        return len(events)

    async def list(
        self, *, limit: int, offset: int, task_id: str | None = None
    ) -> tuple[list[RowMapping], int]:
        """A page, newest first, and the total, in one statement (one round trip). Past the last page
        no row carries the total, and only then does a second statement count."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if task_id is not None:
            params["task_id"] = task_id
        page, count = (_PAGE, _COUNT) if task_id is None else (_PAGE_FOR_TASK, _COUNT_FOR_TASK)
        rows = (await self.session.execute(page, params)).mappings().all()
        if rows:
            return list(rows), int(rows[0]["total"])
        return [], 0 if offset == 0 else int(await self.session.scalar(count, params) or 0)
