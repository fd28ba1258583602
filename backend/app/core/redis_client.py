"""This process's Redis clients (owned by ``app.runtime``: made on first use, never inherited across
fork, closed at shutdown).

The asyncio client serves request and task code; the synchronous one serves code that cannot await
(Celery signal handlers, the task-event buffer). Both time out after REDIS_TIMEOUT: a Redis outage
must degrade a request, never hang it.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.asyncio import Redis

from app import runtime
from app.config import connections
from app.config.settings import get_settings


def _options() -> dict[str, Any]:
    settings = get_settings()
    return {"socket_timeout": settings.REDIS_TIMEOUT, "socket_connect_timeout": settings.REDIS_TIMEOUT}


def _build_async() -> Redis:
    return Redis.from_url(connections.redis_url(get_settings()), health_check_interval=30, **_options())


def _build_sync() -> redis.Redis:
    return redis.Redis.from_url(connections.redis_url(get_settings()), **_options())


async def _close_async(client: Redis) -> None:
    await client.aclose()


async def _close_sync(client: redis.Redis) -> None:
    client.close()


def get_redis() -> Redis:
    return runtime.current().get("redis.async", _build_async, close=_close_async)


def get_sync_redis() -> redis.Redis:
    return runtime.current().get("redis.sync", _build_sync, close=_close_sync)
