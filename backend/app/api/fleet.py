"""What the fleet page shows: the audit, per service, and its last ten minutes.

A sample is the live audit (``pg_stat_activity`` through ``app.budget.audit``) reduced to what a person
watches: each service's connections open and in use (not idle) against its budget, the allocation and
the cap in force, and the instance. Samples are kept in Redis, so every API process and replica answers
with the same history, and are taken only while someone watches: the first request in each
``SAMPLE_SECONDS`` slot samples (``SET NX`` on a slot key), the others read. Nobody watching costs
nothing; Redis down, the page shows the current sample alone.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.budget.audit import Audit, publish, run_audit
from app.config.settings import Settings
from app.core.orchestrator_factory import checkpointer_service
from app.core.redis_client import get_redis

log = structlog.get_logger("app.fleet")

SAMPLE_SECONDS = 2.0  # the page refreshes this often
HISTORY_SECONDS = 600  # and shows this much


def _in_use(audit: Audit, application_name: str) -> int:
    """Connections of ``application_name`` to this database doing something (not ``idle``): checked
    out of a pool, as the server sees it."""
    return sum(
        int(row["n"])
        for row in audit.rows
        if row["datname"] == audit.database
        and row["application_name"] == application_name
        and row["state"] not in ("idle", None)
    )


def sample(audit: Audit) -> dict[str, Any]:
    prefix = f"{audit.environment}."
    services = []
    for s in audit.services:
        in_use = _in_use(audit, prefix + s.service) + _in_use(audit, prefix + checkpointer_service(s.service))
        services.append({"service": s.service, "open": s.total, "in_use": in_use, "budget": s.budget})
    body = audit.as_dict()
    return {
        "t": round(time.time(), 1),
        "environment": audit.environment,
        "database": audit.database,
        "allocation": audit.allocation,
        "admin_reserve": audit.admin_reserve,
        "charged": audit.charged,
        "other": audit.other,
        "services": services,
        "cap": body.get("connection_cap"),
        "instance": {
            "environments": body["environments"],
            "server_total": audit.server_total,
            "max_connections": audit.server.max_connections,
            "usable": audit.server.usable,
        },
    }


def _keys(settings: Settings) -> tuple[str, str]:
    base = f"{settings.REDIS_KEY_PREFIX}fleet:{settings.ENVIRONMENT}"
    return f"{base}:samples", f"{base}:slot"


async def current(session: AsyncSession, settings: Settings) -> dict[str, Any]:
    """The page's data: the current sample and the history (oldest first)."""
    audit = await run_audit(session, settings)
    publish(audit)
    now = sample(audit)
    samples, slot = _keys(settings)
    keep = int(HISTORY_SECONDS / SAMPLE_SECONDS)
    try:
        redis = get_redis()
        if await redis.set(slot, b"1", nx=True, px=int(SAMPLE_SECONDS * 1000)):
            await redis.lpush(samples, json.dumps(now))
            await redis.ltrim(samples, 0, keep - 1)
            await redis.expire(samples, HISTORY_SECONDS)
        history = [json.loads(item) for item in reversed(await redis.lrange(samples, 0, keep - 1))]
    except (RedisError, OSError) as error:
        log.warning("fleet_history_unavailable", error=str(error))
        history = [now]
    return {**now, "history": [_point(h) for h in history if h["t"] >= now["t"] - HISTORY_SECONDS]}


def _point(h: dict[str, Any]) -> dict[str, Any]:
    """A history point: time, and each service's open connections (what the chart draws)."""
    return {"t": h["t"], "charged": h["charged"], "open": {s["service"]: s["open"] for s in h["services"]}}
