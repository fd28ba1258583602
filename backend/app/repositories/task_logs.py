"""Reads and batch writes of task_logs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import TaskLog


class TaskLogRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, events: Sequence[dict[str, Any]]) -> int:
        """One INSERT for a whole batch: one connection and one round trip, not one per line."""
        if not events:
            return 0
        await self.session.execute(insert(TaskLog), list(events))
        return len(events)

    async def list(self, *, limit: int, offset: int, task_id: str | None = None) -> tuple[list[TaskLog], int]:
        query = select(TaskLog)
        count = select(func.count()).select_from(TaskLog)
        if task_id is not None:
            query = query.where(TaskLog.task_id == task_id)
            count = count.where(TaskLog.task_id == task_id)
        rows = await self.session.scalars(
            query.order_by(TaskLog.created_at.desc(), TaskLog.id.desc()).limit(limit).offset(offset)
        )
        total = await self.session.scalar(count)
        return list(rows), int(total or 0)
