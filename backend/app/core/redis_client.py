"""Redis clients, one of each kind per process, created lazily (like the engine: never inherited
across fork, where a parent's socket would be shared with its children).

The asyncio client serves request and task code; the synchronous one serves code that cannot await
(Celery signal handlers, the task-event buffer).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from redis.asyncio import Redis

from app.config.settings import get_settings

_async: tuple[int, Redis] | None = None
_sync: tuple[int, redis.Redis] | None = None


def _options() -> dict[str, Any]:
    settings = get_settings()
    # Short timeouts: a Redis outage must degrade a request, never hang it.
    return {"socket_timeout": settings.REDIS_TIMEOUT, "socket_connect_timeout": settings.REDIS_TIMEOUT}


def get_redis() -> Redis:
    global _async
    if _async is None or _async[0] != os.getpid():
        _async = (
            os.getpid(),
            Redis.from_url(get_settings().redis_url, health_check_interval=30, **_options()),
        )
    return _async[1]


def get_sync_redis() -> redis.Redis:
    global _sync
    if _sync is None or _sync[0] != os.getpid():
        _sync = (os.getpid(), redis.Redis.from_url(get_settings().redis_url, **_options()))
    return _sync[1]


async def close_redis() -> None:
    global _async
    if _async is not None and _async[0] == os.getpid():
        await _async[1].aclose()
    _async = None
