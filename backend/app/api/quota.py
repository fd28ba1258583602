"""Per-user quotas on roadmap creation: a rate (ROADMAP_CREATE_RATE_LIMIT) and a cap on roadmaps in
progress (ROADMAP_MAX_IN_PROGRESS). Each roadmap is minutes of LLM and search calls on the workers
every user shares.

* The rate is counted in Redis (``limits``, a moving window), so every process and replica shares one
  count per user; over it, 429 ``rate_limited`` with ``Retry-After``. Checked before the body is parsed.
* The cap is counted in PostgreSQL in the creating transaction, after the insert, under a per-user
  lock (``RoadmapRepository.lock_owner``): concurrent creations cannot slip past it. Over it, 429
  ``too_many_in_progress`` and the insert rolls back.
* Redis unreachable or stalled (past RATE_CHECK_TIMEOUT): the rate is not counted. Creation does not
  need Redis (its task waits in the outbox), so failing closed would turn a Redis outage into a
  creation outage; the cap still bounds what one user can start.
"""

from __future__ import annotations

import asyncio
import math
import time

import redis.exceptions
import structlog
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from sqlalchemy.ext.asyncio import AsyncSession

from app import runtime
from app.api.deps import CurrentUser
from app.config.settings import get_settings
from app.core.logging import LogRateLimiter
from app.core.redis_client import get_redis
from app.repositories.roadmaps import RoadmapRepository

log = structlog.get_logger("app.api.quota")
_unchecked = LogRateLimiter(interval=1.0)

# Redis answers a rate check in well under a millisecond; past this it is stalled, and waiting longer
# would only add to every POST's latency during the stall.
RATE_CHECK_TIMEOUT = 0.25


class QuotaExceeded(Exception):
    """A 429 with a machine-readable reason (``rate_limited``, ``too_many_in_progress``)."""

    def __init__(self, reason: str, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


async def quota_exceeded(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, QuotaExceeded)
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    content = {"detail": error.detail, "reason": error.reason}
    return JSONResponse(status_code=429, content=content, headers=headers)


def _build_rate_limiter() -> MovingWindowRateLimiter:
    # The storage borrows this process's Redis client's connection pool: the quota opens no
    # connections of its own, and the runtime that owns the client owns the limiter beside it.
    storage = RedisStorage(
        "async+redis://",  # the scheme selects the storage; the pool below is the connection
        implementation="redispy",
        key_prefix=f"{get_settings().REDIS_KEY_PREFIX}limits",
        connection_pool=get_redis().connection_pool,
    )
    return MovingWindowRateLimiter(storage)


def _rate_limiter() -> MovingWindowRateLimiter:
    return runtime.current().get("quota.limiter", _build_rate_limiter)


def create_rate_limits() -> list[RateLimitItem]:
    return parse_many(get_settings().ROADMAP_CREATE_RATE_LIMIT)


async def _refusal(subject: str) -> QuotaExceeded | None:
    limiter = _rate_limiter()
    for item in create_rate_limits():
        if not await limiter.hit(item, "roadmap_create", subject):
            stats = await limiter.get_window_stats(item, "roadmap_create", subject)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
            return QuotaExceeded(
                "rate_limited",
                f"at most {item} roadmap creations per user (ROADMAP_CREATE_RATE_LIMIT); "
                f"retry in {retry_after} s",
                retry_after,
            )
    return None


async def create_rate_limit(user: CurrentUser) -> None:
    """Raises 429 when ``user`` created ROADMAP_CREATE_RATE_LIMIT roadmaps already."""
    try:
        async with asyncio.timeout(RATE_CHECK_TIMEOUT):
            refusal = await _refusal(user.subject)
    except (redis.exceptions.RedisError, OSError, TimeoutError) as error:
        if _unchecked.allow("rate"):
            log.warning("roadmap_rate_limit_unchecked", error_type=type(error).__name__, error=str(error))
        return
    if refusal is not None:
        raise refusal


async def claim_in_progress_slot(session: AsyncSession, owner: str) -> None:
    """In the transaction that has just inserted ``owner``'s new roadmap: raises 429 (and so rolls the
    insert back) when that makes more than ROADMAP_MAX_IN_PROGRESS of theirs in progress. The lock is
    held until the transaction ends, so the next creation of the same owner counts this one."""
    cap = get_settings().ROADMAP_MAX_IN_PROGRESS
    repo = RoadmapRepository(session)
    await repo.lock_owner(owner)
    in_progress = await repo.count_in_progress(owner)
    if in_progress > cap:  # this request's own roadmap included
        # No Retry-After: when one of them finishes is not known here.
        raise QuotaExceeded(
            "too_many_in_progress",
            f"{in_progress - 1} of your roadmaps are still in progress, the most allowed "
            f"(ROADMAP_MAX_IN_PROGRESS={cap}); create more when one has finished",
        )


CreateRateLimit = Depends(create_rate_limit)
