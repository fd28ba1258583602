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

Claiming a roadmap bumps its ``updated_at`` in the same statement
(``RoadmapRepository.claim_stalled``), so several watchdogs never re-dispatch one roadmap twice, and
the next look waits another stall period. The re-dispatch goes through the outbox, in the claim's
transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog

from app.config.settings import get_settings
from app.core.metrics import WATCHDOG_ACTIONS
from app.db.models import RoadmapStatus
from app.db.session import safe_session
from app.messaging import outbox
from app.messaging.names import GENERATE_CONTENT, RESUME_WORKFLOW, RUN_WORKFLOW
from app.repositories.roadmaps import RoadmapRepository

log = structlog.get_logger("app.watchdog")


@dataclass(frozen=True)
class Verdict:
    roadmap_id: str
    action: str  # the task re-dispatched, or "failed"


def _next_task(status: str, unfinished: int) -> str:
    if status != RoadmapStatus.GENERATING:
        return RUN_WORKFLOW
    return GENERATE_CONTENT if unfinished else RESUME_WORKFLOW


async def watch(limit: int = 100) -> list[Verdict]:
    """One look: claim stalled roadmaps, re-dispatch or fail each, publish the re-dispatches."""
    settings = get_settings()
    verdicts: list[Verdict] = []
    staged: list[outbox.Message] = []
    async with safe_session() as session:
        repo = RoadmapRepository(session)
        for claimed in await repo.claim_stalled(settings.ROADMAP_STALL_SECONDS, limit):
            roadmap_id = claimed.roadmap_id
            if claimed.redispatches > settings.ROADMAP_MAX_REDISPATCHES:
                reason = (
                    f"no progress for {settings.ROADMAP_STALL_SECONDS} s after "
                    f"{settings.ROADMAP_MAX_REDISPATCHES} re-dispatches (stalled while {claimed.status})"
                )
                await repo.set_status(uuid.UUID(roadmap_id), RoadmapStatus.FAILED, reason)
                verdicts.append(Verdict(roadmap_id, RoadmapStatus.FAILED.value))
                continue
            task = _next_task(claimed.status, claimed.unfinished)
            staged.append(await outbox.stage(session, task, roadmap_id))
            verdicts.append(Verdict(roadmap_id, task))
    for verdict in verdicts:
        WATCHDOG_ACTIONS.labels(action=verdict.action.rsplit(".", 1)[-1]).inc()
        log.warning("roadmap_stalled", roadmap_id=verdict.roadmap_id, action=verdict.action)
    await outbox.publish(staged, source="watchdog")
    return verdicts
