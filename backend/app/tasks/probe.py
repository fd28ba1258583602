"""A smoke test every queue answers: which process ran it, as which service, and what its pool holds.

``celery -A app.core.celery_app call app.tasks.content_generation_tasks.probe`` after a deploy shows
that the queue is served and that the worker reaches the database under its own application_name.
``hold_seconds`` keeps the connection checked out (to load a pool); ``sleep_seconds`` waits *without*
one, the way a task should wait for an LLM.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict
from typing import Any

from sqlalchemy import text

from app.db.engine import current_service, pool_snapshot
from app.db.session import safe_session


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
        "service": current_service(),
        "application_name": application_name,
        "pool": asdict(pool_snapshot()),
    }
