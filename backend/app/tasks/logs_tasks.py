"""Queue ``logs``: writes buffered task events to task_logs, one connection per batch."""

from __future__ import annotations

from typing import Any

import structlog

from app import runtime
from app.config.settings import get_settings
from app.core.celery_app import celery_app
from app.core.redis_client import get_sync_redis
from app.db.session import safe_session
from app.messaging import task_events
from app.messaging.names import FLUSH_TASK_EVENTS
from app.repositories.task_logs import TaskLogRepository

log = structlog.get_logger("app.tasks.logs")


async def _write(batch: list[dict[str, Any]]) -> None:
    async with safe_session() as session:
        await TaskLogRepository(session).add_many(batch)


@celery_app.task(name=FLUSH_TASK_EVENTS)
def flush_task_events() -> int:
    """Drain the Redis buffer into task_logs. One flusher at a time (a Redis lock), so a batch is
    trimmed from the buffer only by the process that committed it."""
    size = get_settings().TASK_LOG_BATCH_SIZE
    lock = get_sync_redis().lock(f"{task_events.pending_key()}:lock", timeout=60, blocking=False)
    if not lock.acquire():
        return 0
    written = 0
    try:
        while batch := task_events.peek_batch(size):
            runtime.current().run(_write(task_events.without_forgotten(batch)))
            task_events.drop_batch(len(batch))
            written += len(batch)
    finally:
        lock.release()
    if written:
        log.info("task_events_flushed", rows=written)
    return written
