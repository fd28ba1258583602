"""Sending a task by name, the one way every module enqueues (the outbox, the task-event flush).

``send_task`` does not know the task's options, so it would ask for a stored result (and a result
subscription in the sending process) unless told: results are never read here (``task_ignore_result``;
progress lives in the database), so every send says ``ignore_result=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery.result import AsyncResult

from app.core.celery_app import celery_app


def send_by_name(task_name: str, args: Sequence[Any] = (), **options: Any) -> AsyncResult:
    return celery_app.send_task(task_name, args=list(args), ignore_result=True, **options)
