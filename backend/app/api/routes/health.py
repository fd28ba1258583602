"""``GET /health``: the guide's JSON shape, with live pool figures and a Redis section.

200 when the database answers; 503 when it does not, including when the pool is exhausted. Either way
the answer leaves within HEALTH_CHECK_TIMEOUT (1.5 s, under the 2 s a load balancer's probe allows):
that is one deadline for both checks, which run in parallel, and whatever has not answered by then is
reported ``timeout`` and never waited for (it ends on its own deadlines). A Redis outage
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
    try:
        async with safe_session() as session:
            await session.execute(text("SELECT 1"))
        return True, None
    except TimeoutError:  # its own deadlines (connect, idle ping, command): the same as ours
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


# The database probe in flight in this process. A call that finds one running waits on it rather than
# starting another: under a stalled database a probe holds its pool connection until the statement's
# own deadline (command_timeout), and one probe per call would take a connection per load-balancer
# probe from the requests. Checks left behind at the deadline are referenced here until they end.
_database_probe: asyncio.Task[tuple[bool, str | None]] | None = None
_left_behind: set[asyncio.Task[tuple[bool, str | None]]] = set()


def _probe_database() -> asyncio.Task[tuple[bool, str | None]]:
    global _database_probe
    probe = _database_probe
    if probe is None or probe.done() or probe.get_loop() is not asyncio.get_running_loop():
        probe = _database_probe = asyncio.create_task(_database_ok())
    return probe


async def _checks() -> tuple[tuple[bool, str | None], tuple[bool, str | None]]:
    database = _probe_database()
    redis = asyncio.create_task(_redis_ok())
    # One deadline for both, and nothing awaited past it. asyncio.wait_for on the probe, as before,
    # also waited for the cancelled probe to clean up its connection, which a stalled database drags
    # out: 1.7-2.3 s per call against a 1.5 s timeout. asyncio.wait cancels nothing (another call
    # may share the probe); neither check raises.
    await asyncio.wait((database, redis), timeout=get_settings().HEALTH_CHECK_TIMEOUT)
    for check in (database, redis):
        if not check.done():
            _left_behind.add(check)
            check.add_done_callback(_left_behind.discard)
    return (
        database.result() if database.done() else (False, "timeout"),
        redis.result() if redis.done() else (False, "TimeoutError"),
    )


_UNHEALTHY = "the database is unreachable (same body), or the process is draining (status draining)"


@router.get("/health", responses={503: {"description": _UNHEALTHY}})
async def health() -> JSONResponse:
    if drain.draining():
        # After SIGTERM (app.api.server): take this instance out of rotation, whatever its pools say.
        return JSONResponse(status_code=503, content={"status": "draining"})
    (db_ok, db_error), (redis_ok, redis_error) = await _checks()
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
