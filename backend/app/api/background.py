"""The fleet's periodic jobs, run by the API processes: the outbox relay, the roadmap watchdog and
retention (task_logs past TASK_LOG_RETENTION_DAYS; a checkpoint sweep asked of the workflow worker).

They need what every API process already has, a budgeted pool and the broker, and they need to run
wherever roadmaps are created, so they ride along in each API process's lifespan instead of adding a
service to deploy, size and watch. Each round takes one short checkout; any number of processes and
replicas may run them at once, because each round claims its rows with ``FOR UPDATE SKIP LOCKED``
(app.messaging.outbox, app.messaging.watchdog); retention's batches take a transaction-scoped advisory
lock, so one batch runs in the fleet at a time, on one connection, none held between batches
(app.messaging.retention). A failing round is logged and the next one tries again: a
database or broker outage pauses them, it never stops them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from app.config.settings import Settings
from app.core.logging import LogRateLimiter
from app.messaging import outbox, retention, watchdog

log = structlog.get_logger("app.background")
_failures = LogRateLimiter(interval=30.0)


async def _every(interval: float, job: Callable[[], Awaitable[Any]], name: str) -> None:
    # A random start spreads the processes' rounds over the interval instead of all at once.
    await asyncio.sleep(random.uniform(0, interval))
    while True:
        try:
            await job()
        except Exception as error:  # noqa: BLE001 - the next round retries
            if _failures.allow(name):
                log.warning("background_job_failed", job=name, error=f"{type(error).__name__}: {error}"[:300])
        await asyncio.sleep(interval)


def start(settings: Settings) -> list[asyncio.Task[None]]:
    """Start the relay, the watchdog and retention on the running loop (none when BACKGROUND_JOBS is off)."""
    if not settings.BACKGROUND_JOBS:
        return []
    return [
        asyncio.create_task(_every(settings.OUTBOX_RELAY_INTERVAL_SECONDS, outbox.relay, "outbox_relay")),
        asyncio.create_task(_every(settings.WATCHDOG_INTERVAL_SECONDS, watchdog.watch, "watchdog")),
        asyncio.create_task(
            _every(settings.RETENTION_INTERVAL_SECONDS, retention.retention_round, "retention")
        ),
    ]


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
