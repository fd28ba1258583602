"""Queue ``content_generation``: late-acknowledged tasks, redelivered if their worker process dies."""

from __future__ import annotations

from typing import Any

from app.core import async_runner
from app.core.celery_app import celery_app, queue_options
from app.tasks.probe import probe_database


@celery_app.task(name="app.tasks.content_generation_tasks.probe", **queue_options("content_generation"))
def probe(hold_seconds: float = 0.0, sleep_seconds: float = 0.0) -> dict[str, Any]:
    return async_runner.run(probe_database(hold_seconds, sleep_seconds))
