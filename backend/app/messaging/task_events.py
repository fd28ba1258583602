"""Task events, buffered in Redis and written to task_logs in batches by the ``logs`` queue.

Any process (API, workers) calls ``emit()``: one RPUSH, no database connection. At most one
``flush_task_events`` (queue ``logs``) is queued per TASK_LOG_FLUSH_INTERVAL (a SET NX guard), and that task
writes up to TASK_LOG_BATCH_SIZE events per connection. Writing one row per event from every worker
would cost a checkout per line; here a burst of thousands of events costs a handful.

Events are removed from Redis only after their batch is committed, so a crash means at-least-once,
never a lost event. An event that never reaches Redis (Redis down) is lost, by design: logging must not
fail the task that logs. It is counted, not just logged: ``task_events_dropped_total{reason}`` in
/metrics, and this process's count in /health (``dropped_counts()``).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis
import structlog

from app.config.settings import get_settings
from app.core import metrics
from app.core.redis_client import get_sync_redis
from app.messaging.names import FLUSH_TASK_EVENTS
from app.messaging.send import send_by_name

log = structlog.get_logger("app.task_events")

# This process's drops by reason, for /health (the Prometheus counter is the fleet-wide figure). emit()
# runs in request threadpools and task threads alike, hence the lock.
_dropped: Counter[str] = Counter()
_dropped_lock = threading.Lock()


def pending_key() -> str:
    return f"{get_settings().REDIS_KEY_PREFIX}task_events:pending"


def flush_guard_key() -> str:
    return f"{get_settings().REDIS_KEY_PREFIX}task_events:flush_scheduled"


def record(
    event: str,
    *,
    task_name: str,
    task_id: str | None = None,
    queue: str | None = None,
    level: str = "info",
    **payload: Any,
) -> dict[str, Any]:
    """A task_logs row for ``event``: for a writer that stores it in its own transaction instead of
    through the buffer (an event that must exist exactly when the data it reports does)."""
    return {
        "task_id": task_id,
        "task_name": task_name,
        "queue": queue,
        "event": event,
        "level": level,
        "payload": payload,
        "created_at": datetime.now(UTC),
    }


def emit(
    event: str,
    *,
    task_name: str,
    task_id: str | None = None,
    queue: str | None = None,
    level: str = "info",
    **payload: Any,
) -> None:
    """Record a task event. Never raises: losing a log line must not fail the task that logs it."""
    entry = record(event, task_name=task_name, task_id=task_id, queue=queue, level=level, **payload)
    entry["created_at"] = entry["created_at"].isoformat()  # peek_batch parses it back
    try:
        client = get_sync_redis()
        client.rpush(pending_key(), json.dumps(entry, default=str))
    except Exception as exc:  # noqa: BLE001
        _drop(event, exc)
        return
    try:
        interval_ms = int(get_settings().TASK_LOG_FLUSH_INTERVAL * 1000)
        if client.set(flush_guard_key(), "1", nx=True, px=interval_ms):
            send_by_name(FLUSH_TASK_EVENTS, countdown=get_settings().TASK_LOG_FLUSH_INTERVAL)
    except Exception as exc:  # noqa: BLE001
        # Not lost: the event is in Redis, and the next emit after the guard expires schedules a flush.
        log.warning("task_event_flush_not_scheduled", task_event=event, error=str(exc))


def _drop(event: str, error: Exception) -> None:
    if isinstance(error, redis.ConnectionError | redis.TimeoutError):
        reason = "redis_unavailable"
    elif isinstance(error, redis.RedisError):
        reason = "redis_error"  # e.g. READONLY after a failover, OOM
    else:
        reason = "error"
    with _dropped_lock:
        _dropped[reason] += 1
    metrics.TASK_EVENTS_DROPPED.labels(reason).inc()
    log.warning("task_event_dropped", task_event=event, reason=reason, error=str(error))


def dropped_counts() -> dict[str, int]:
    """Events this process could not record since it started, by reason."""
    with _dropped_lock:
        return dict(_dropped)


def peek_batch(size: int) -> list[dict[str, Any]]:
    raw = get_sync_redis().lrange(pending_key(), 0, size - 1)
    events = []
    for item in raw:
        record = json.loads(item)
        record["created_at"] = datetime.fromisoformat(record["created_at"])
        events.append(record)
    return events


def drop_batch(count: int) -> None:
    get_sync_redis().ltrim(pending_key(), count, -1)


def forgotten_key() -> str:
    return f"{get_settings().REDIS_KEY_PREFIX}task_events:forgotten"


# How long a deleted roadmap's id keeps its buffered events out of task_logs: far longer than an event
# waits in the buffer unless the database is down that long.
FORGET_SECONDS = 3600


def forget(task_ids: list[str]) -> None:
    """Events of these task ids still in the buffer are dropped instead of written: a roadmap deleted
    right after it finished must not get its last events back a second later. Never raises (the
    deleting worker deletes the rows once more; retention removes any that still land)."""
    if not task_ids:
        return
    try:
        client = get_sync_redis()
        client.sadd(forgotten_key(), *task_ids)
        client.expire(forgotten_key(), FORGET_SECONDS)
    except Exception as exc:  # noqa: BLE001
        log.warning("task_events_not_forgotten", ids=len(task_ids), error=str(exc))


def without_forgotten(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` less those of forgotten task ids (one SMISMEMBER per batch)."""
    ids = [e["task_id"] for e in events if e.get("task_id")]
    if not ids:
        return events
    flags = get_sync_redis().smismember(forgotten_key(), ids)
    forgotten = {task_id for task_id, flag in zip(ids, flags, strict=True) if flag}
    return [e for e in events if e.get("task_id") not in forgotten] if forgotten else events


def pending_count() -> int:
    return int(get_sync_redis().llen(pending_key()))
