"""API shapes of task events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class TaskLogOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: str | None
    task_name: str
    queue: str | None
    event: str
    level: str
    payload: dict[str, Any]
    created_at: datetime


class TaskLogPage(BaseModel):
    items: list[TaskLogOut]
    total: int
    limit: int
    offset: int
