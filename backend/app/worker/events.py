"""Every task's start and end as task events (``task_started``, ``task_succeeded`` / ``task_retried`` /
``task_failed``, with its queue, attempt and run time), buffered like any other event
(``app.messaging.task_events``). The flush task itself is left out: it would log its own flushing."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import signals

from app.messaging import task_events
from app.messaging.names import FLUSH_TASK_EVENTS


def _queue_of(task: Any) -> str | None:
    info = getattr(task.request, "delivery_info", None) or {}
    return info.get("routing_key") or getattr(task, "queue", None)


@signals.task_prerun.connect
def _on_task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None or task.name == FLUSH_TASK_EVENTS:
        return
    # On the request: it lives exactly as long as this run of the task.
    task.request.started_at = time.perf_counter()
    task_events.emit(
        "task_started",
        task_name=task.name,
        task_id=task_id,
        queue=_queue_of(task),
        attempt=(task.request.retries or 0) + 1,
        redelivered=bool((task.request.delivery_info or {}).get("redelivered")),
        pid=os.getpid(),
    )


@signals.task_postrun.connect
def _on_task_finished(
    task_id: str | None = None, task: Any = None, state: str | None = None, retval: Any = None, **_: Any
) -> None:
    if task is None or task.name == FLUSH_TASK_EVENTS:
        return
    started = getattr(task.request, "started_at", None)
    outcome = {"SUCCESS": "task_succeeded", "RETRY": "task_retried"}.get(state or "", "task_failed")
    extra = {"error": repr(retval)[:500]} if outcome == "task_failed" else {}
    task_events.emit(
        outcome,
        task_name=task.name,
        task_id=task_id,
        queue=_queue_of(task),
        level="error" if outcome == "task_failed" else "info",
        state=state,
        runtime_seconds=None if started is None else round(time.perf_counter() - started, 3),
        pid=os.getpid(),
        **extra,
    )
