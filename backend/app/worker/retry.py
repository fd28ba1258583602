"""The base class of every task (``task_cls`` of the Celery app): retry when the database went away.

A restart, a failover or a network cut should delay a task, not fail it. Only "unavailable" errors
qualify (``app.db.errors``); a bug or a constraint violation fails as usual. The countdown is Celery's
own exponential backoff (``retry_backoff`` x 2^retries, capped at ``retry_backoff_max``), long enough
in total (about two minutes over ``max_retries``) to ride out a managed failover.

A connection the server refused because this environment's allocation is full (53300) is retried the
same way, with ``reason=allocation_exhausted`` in the log line; the refusal itself was already counted
where the connection was attempted (``db_allocation_exhausted_total``).
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from app import topology
from app.db.errors import is_allocation_exhausted, is_database_unavailable

log = structlog.get_logger("app.celery")


class DatabaseTask(Task):
    abstract = True
    max_retries = 8
    retry_backoff = 1
    retry_backoff_max = topology.RETRY_COUNTDOWN_MAX
    # No jitter: with full jitter a retry can come at once, while the database is still away, and
    # spend the retries too early. Tasks are spread already: each started at its own time.
    retry_jitter = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as error:
            if not is_database_unavailable(error) or self.request.called_directly:
                raise
            delay = get_exponential_backoff_interval(
                factor=self.retry_backoff,
                retries=self.request.retries or 0,
                maximum=self.retry_backoff_max,
                full_jitter=self.retry_jitter,
            )
            log.warning(
                "task_database_unavailable_retrying",
                task=self.name,
                retry_in=delay,
                reason="allocation_exhausted" if is_allocation_exhausted(error) else "database_unavailable",
                error=str(error),
            )
            raise self.retry(exc=error, countdown=delay) from None
