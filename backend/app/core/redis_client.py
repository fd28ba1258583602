"""One asyncio Redis client per process, created lazily (like the engine, never inherited across fork)."""

from __future__ import annotations

import os

from redis.asyncio import Redis

from app.config.settings import get_settings

_client: Redis | None = None
_pid: int | None = None


def get_redis() -> Redis:
    global _client, _pid
    if _client is None or _pid != os.getpid():
        settings = get_settings()
        # Short timeouts: a Redis outage must degrade a request, never hang it.
        _client = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.REDIS_TIMEOUT,
            socket_connect_timeout=settings.REDIS_TIMEOUT,
            health_check_interval=30,
        )
        _pid = os.getpid()
    return _client


async def close_redis() -> None:
    global _client
    if _client is not None and _pid == os.getpid():
        await _client.aclose()
    _client = None
