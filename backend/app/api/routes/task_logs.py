"""``GET /api/v1/task-logs``: the structured task events the ``logs`` queue stored, newest first.

Admins only. Events describe every user's work (task ids are roadmap ids, payloads carry topics and
errors) and carry no owner to filter on: an operator's view, not a user's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminUser
from app.api.routes import API_V1
from app.db.session import read
from app.repositories.task_logs import TaskLogRepository
from app.schemas.errors import AUTH, UNAVAILABLE
from app.schemas.task_logs import TaskLogOut, TaskLogPage

router = APIRouter(prefix=f"{API_V1}/task-logs", tags=["task-logs"], responses={**AUTH, **UNAVAILABLE})


@router.get("", response_model=TaskLogPage)
async def list_task_logs(
    _admin: AdminUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    task_id: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")] = None,
) -> TaskLogPage:
    rows, total = await read(
        lambda db: TaskLogRepository.list(db, limit=limit, offset=offset, task_id=task_id)
    )
    return TaskLogPage(items=[TaskLogOut(**row) for row in rows], total=total, limit=limit, offset=offset)
