"""A smoke test every queue answers: which process ran it, as which service, and what its pool holds.

One task, registered by every worker (``app.core.celery_app`` includes this module); the caller picks
the queue. After a deploy, ``celery -A app.core.celery_app call app.tasks.probe.probe
--queue=content_generation`` shows that the queue is served and that its worker reaches the database
under its own application_name. ``hold_seconds`` keeps the connection checked out (to load a pool);
``sleep_seconds`` waits *without* one, the way a task should wait for an LLM.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict
from typing import Any

from sqlalchemy import text

from app import runtime
from app.core.celery_app import celery_app
from app.db.engine import pool_snapshot
from app.db.session import safe_session
from app.messaging.names import PROBE


async def probe_database(hold_seconds: float, sleep_seconds: float) -> dict[str, Any]:
    async with safe_session() as session:
        application_name = await session.scalar(text("SHOW application_name"))
        if hold_seconds:
            await session.execute(text("SELECT pg_sleep(:s)"), {"s": hold_seconds})
    if sleep_seconds:
        await asyncio.sleep(sleep_seconds)
    return {
        "pid": os.getpid(),
        "parent_pid": os.getppid(),
        "service": runtime.current().service,
        "application_name": application_name,
        "pool": asdict(pool_snapshot()),
    }


# Its result is read (tests, diagnostics), unlike every other task's. Acknowledged late and redelivered
# when its worker dies, like the long tasks: it is how the fault tests watch a redelivery happen.
# Its own time limit: no queue's annotation applies to this module.
@celery_app.task(
    name=PROBE,
    ignore_result=False,
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=60,
    soft_time_limit=54,
)
def probe(hold_seconds: float = 0.0, sleep_seconds: float = 0.0) -> dict[str, Any]:
    return runtime.current().run(probe_database(hold_seconds, sleep_seconds))
