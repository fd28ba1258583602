"""``GET /metrics``: Prometheus text, aggregated over every uvicorn worker of this service.

Each scrape first runs the live budget audit (one short pg_stat_activity query on the pool, bounded by
HEALTH_CHECK_TIMEOUT) so that ``db_server_connections{service}`` is what the *server* sees, and reads
the growing tables' sizes and oldest rows (``data_table_bytes``, ``data_oldest_row_age_seconds``: two
index-served statements); a failure only leaves those gauges as they were.
"""

from __future__ import annotations

import asyncio

import structlog
from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.budget.audit import publish, run_audit
from app.config.settings import get_settings
from app.core.metrics import render_latest
from app.db.session import safe_session
from app.messaging import retention

router = APIRouter(tags=["monitoring"])
log = structlog.get_logger("app.metrics")


async def refresh_server_gauges() -> None:
    settings = get_settings()

    async def audit() -> None:
        async with safe_session() as session:
            publish(await run_audit(session, settings))
            retention.publish_storage(await retention.storage(await session.connection()))

    try:
        await asyncio.wait_for(audit(), timeout=settings.HEALTH_CHECK_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - metrics must answer even when the database does not
        log.warning("budget_audit_failed", error_type=type(exc).__name__)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    if get_settings().DB_AUDIT_ON_SCRAPE:
        await refresh_server_gauges()
    # Reading the per-process files is blocking I/O: off the event loop.
    body, content_type = await run_in_threadpool(render_latest)
    return Response(content=body, media_type=content_type)
