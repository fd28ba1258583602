"""``GET /health``: the guide's JSON shape, with live pool figures and a Redis section.

200 when the database answers; 503 within HEALTH_CHECK_TIMEOUT (kept under the 2 s a load balancer
typically allows) when it does not, including when the pool is exhausted. A Redis outage
degrades the service (status ``degraded``) but does not take it out of rotation: reads still work; the
``task_events`` section then says events are not being recorded and counts the ones this process lost.
Nothing secret is reported: no URL, no host, no user.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

import structlog
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api import drain
from app.config.settings import get_settings
from app.core.orchestrator_factory import checkpointer_stats
from app.core.redis_client import get_redis
from app.db.engine import pool_snapshot
from app.db.session import safe_session
from app.messaging import task_events

router = APIRouter(tags=["health"])
log = structlog.get_logger("app.health")


async def _database_ok() -> tuple[bool, str | None]:
    async def probe() -> None:
        async with safe_session() as session:
            await session.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(probe(), timeout=get_settings().HEALTH_CHECK_TIMEOUT)
        return True, None
    except TimeoutError:
        return False, "timeout"
    except Exception as exc:  # noqa: BLE001 - any failure makes the database unhealthy
        log.warning("health_database_failed", error_type=type(exc).__name__, error=str(exc))
        return False, type(exc).__name__


async def _redis_ok() -> tuple[bool, str | None]:
    try:
        await asyncio.wait_for(get_redis().ping(), timeout=get_settings().REDIS_TIMEOUT)
        return True, None
    except Exception as exc:  # noqa: BLE001
        return False, type(exc).__name__


_UNHEALTHY = "the database is unreachable (same body), or the process is draining (status draining)"


@router.get("/health", responses={503: {"description": _UNHEALTHY}})
async def health() -> JSONResponse:
    if drain.draining():
        # After SIGTERM (app.api.server): take this instance out of rotation, whatever its pools say.
        return JSONResponse(status_code=503, content={"status": "draining"})
    (db_ok, db_error), (redis_ok, redis_error) = await asyncio.gather(_database_ok(), _redis_ok())
    database: dict[str, Any] = {
        "status": "healthy" if db_ok else "unhealthy",
        "pool": asdict(pool_snapshot()),
    }
    if db_error:
        database["error"] = db_error
    redis: dict[str, Any] = {"status": "healthy" if redis_ok else "unhealthy"}
    if redis_error:
        redis["error"] = redis_error
    status = "healthy" if db_ok and redis_ok else ("degraded" if db_ok else "unhealthy")
    dropped = task_events.dropped_counts()
    return JSONResponse(
        status_code=200 if db_ok else 503,
        content={
            "status": status,
            "database": database,
            "redis": redis,
            # The checkpointer pool of *this* process: API processes do not open one (only workflow
            # workers run graphs), so here it normally reads opened=false with its configured sizes.
            "langgraph": {"pool": asdict(checkpointer_stats())},
            # Events emitted while Redis is down are dropped (logging never fails a request or a task):
            # how many this process lost, and whether the ones emitted now are recorded.
            # task_events_dropped_total in /metrics is the same count summed over processes.
            "task_events": {
                "recording": redis_ok,
                "dropped": sum(dropped.values()),
                "dropped_by_reason": dropped,
            },
        },
    )
