"""The watchdog: a roadmap in progress that stopped moving is re-dispatched, or failed with a reason.

A roadmap can stop moving however carefully each step is written: a broker restarted without
persistence forgets its queued messages, a task can exhaust its retries during a long outage, a worker
can die where no redelivery reaches. Nothing else notices, so every WATCHDOG_INTERVAL_SECONDS one
process of the fleet (app.api.background) looks for roadmaps in progress whose row and concepts have
not changed for ROADMAP_STALL_SECONDS, and for each:

* pending / planning: the workflow again (it resumes from its checkpoint);
* generating with concepts not yet tried or cut off: the content task again (it skips finished ones);
* generating with every concept finished: the workflow's resume (assemble);
* after ROADMAP_MAX_REDISPATCHES re-dispatches: ``failed``, with why.

A roadmap whose task is still in the outbox is left alone: it waits for the broker, and the relay
publishes its task when the broker answers (a long broker outage must not fail roadmaps).

Claiming a roadmap bumps its ``updated_at`` in the same statement (``FOR UPDATE SKIP LOCKED``), so
several watchdogs never re-dispatch one roadmap twice, and the next look waits another stall period.
The re-dispatch goes through the outbox, in the claim's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy import Integer, String, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config.settings import get_settings
from app.core.metrics import WATCHDOG_ACTIONS
from app.db.models import IN_PROGRESS, UNFINISHED_CONCEPT, Concept, OutboxMessage, Roadmap, RoadmapStatus
from app.db.session import safe_session
from app.messaging import outbox
from app.messaging.names import GENERATE_CONTENT, RESUME_WORKFLOW, RUN_WORKFLOW

log = structlog.get_logger("app.watchdog")


@dataclass(frozen=True)
class Verdict:
    roadmap_id: str
    action: str  # the task re-dispatched, or "failed"


def _next_task(status: str, unfinished: int) -> str:
    if status != RoadmapStatus.GENERATING:
        return RUN_WORKFLOW
    return GENERATE_CONTENT if unfinished else RESUME_WORKFLOW


async def _claim_stalled(session: AsyncSession, limit: int) -> list[tuple[str, str, int, int]]:
    settings = get_settings()
    last_concept_change = (
        select(func.max(Concept.updated_at))
        .where(Concept.roadmap_id == Roadmap.id)
        .correlate(Roadmap)
        .scalar_subquery()
    )
    unfinished = (
        select(func.count())
        .where(Concept.roadmap_id == Roadmap.id, Concept.status.in_(UNFINISHED_CONCEPT))
        .correlate(Roadmap)
        .scalar_subquery()
    )
    # A roadmap whose task still waits in the outbox is waiting for the broker, not stalled: the relay
    # will publish it, and re-dispatching would only add a duplicate (and count toward failing it).
    awaiting_broker = (
        select(OutboxMessage.id)
        .where(OutboxMessage.args[0].astext == func.cast(Roadmap.id, String))
        .correlate(Roadmap)
        .exists()
    )
    stalled_before = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, settings.ROADMAP_STALL_SECONDS)
    stalled = (
        select(Roadmap.id)
        .where(
            Roadmap.status.in_(IN_PROGRESS),
            Roadmap.updated_at < stalled_before,
            func.coalesce(last_concept_change, Roadmap.updated_at) < stalled_before,
            ~awaiting_broker,
        )
        .order_by(Roadmap.updated_at)
        .limit(limit)
        .with_for_update(of=Roadmap, skip_locked=True)
        .correlate(None)  # its own scan of roadmaps, not the UPDATE's row
        .scalar_subquery()
    )
    rows = await session.execute(
        update(Roadmap)
        .where(Roadmap.id.in_(stalled))
        .values(redispatches=Roadmap.redispatches + 1, updated_at=func.now())
        .returning(Roadmap.id, Roadmap.status, Roadmap.redispatches, unfinished.cast(Integer))
    )
    return [(str(r[0]), r[1], int(r[2]), int(r[3])) for r in rows]


async def watch(limit: int = 100) -> list[Verdict]:
    """One look: claim stalled roadmaps, re-dispatch or fail each, publish the re-dispatches."""
    settings = get_settings()
    verdicts: list[Verdict] = []
    staged: list[outbox.Message] = []
    async with safe_session() as session:
        for roadmap_id, status, redispatches, unfinished in await _claim_stalled(session, limit):
            if redispatches > settings.ROADMAP_MAX_REDISPATCHES:
                reason = (
                    f"no progress for {settings.ROADMAP_STALL_SECONDS} s after "
                    f"{settings.ROADMAP_MAX_REDISPATCHES} re-dispatches (stalled while {status})"
                )
                await session.execute(
                    update(Roadmap)
                    .where(Roadmap.id == roadmap_id)
                    .values(status=RoadmapStatus.FAILED, error=reason)
                )
                verdicts.append(Verdict(roadmap_id, "failed"))
                continue
            task = _next_task(status, unfinished)
            staged.append(await outbox.stage(session, task, roadmap_id))
            verdicts.append(Verdict(roadmap_id, task))
    for verdict in verdicts:
        WATCHDOG_ACTIONS.labels(action=verdict.action.rsplit(".", 1)[-1]).inc()
        log.warning("roadmap_stalled", roadmap_id=verdict.roadmap_id, action=verdict.action)
    await outbox.publish(staged, source="watchdog")
    return verdicts
