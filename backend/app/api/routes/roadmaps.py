"""``/api/v1/roadmaps``: create (202, workflow enqueued), read one with its concepts, list, delete.

Every route needs a token. A user reads their own roadmaps only (another's is a 404, exactly like a
missing one, so ids cannot be probed); an admin reads everyone's (OWASP API1, object-level access).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse

from app.api.deps import CurrentUser
from app.api.quota import CreateRateLimit, claim_in_progress_slot
from app.api.routes import API_V1
from app.config.settings import get_settings
from app.core.metrics import RETENTION_ROWS_DELETED
from app.core.security import Principal
from app.db.session import read, safe_session
from app.messaging import outbox, task_events
from app.messaging.names import RELEASE_CHECKPOINTS, RUN_WORKFLOW
from app.repositories.roadmaps import EVERY_OWNER, Deletion, EveryOwner, RoadmapRepository
from app.repositories.task_logs import TaskLogRepository
from app.schemas.errors import (
    AUTH,
    BAD_BODY,
    IDEMPOTENCY_CONFLICT,
    NOT_FOUND,
    QUOTA,
    ROADMAP_IN_PROGRESS,
    UNAVAILABLE,
)
from app.schemas.roadmaps import (
    RoadmapAccepted,
    RoadmapCreate,
    RoadmapDetail,
    RoadmapPage,
    RoadmapSummary,
)

router = APIRouter(prefix=f"{API_V1}/roadmaps", tags=["roadmaps"], responses={**AUTH, **UNAVAILABLE})


def readable_by(user: Principal) -> str | EveryOwner:
    """Whose roadmaps ``user`` may read: an admin everyone's, anyone else their own."""
    return EVERY_OWNER if user.role == "admin" else user.subject


# What a client may send as Idempotency-Key: up to 200 visible ASCII characters (a UUID is typical).
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
        description="Retrying a POST with the same key returns the roadmap the first attempt stored.",
    ),
]  # fmt: skip


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RoadmapAccepted,
    responses={**AUTH, **BAD_BODY, **IDEMPOTENCY_CONFLICT, **QUOTA},
    dependencies=[CreateRateLimit],  # per-user rate, counted in Redis (app.api.quota)
)
async def create_roadmap(
    body: RoadmapCreate, user: CurrentUser, response: Response, idempotency_key: IdempotencyKey = None
) -> RoadmapAccepted:
    """Store the roadmap and its workflow task in one transaction, then publish the task.

    202 means stored and will run: the task is in the outbox before the client hears back, so a broker
    that is down or stalled costs at most OUTBOX_PUBLISH_TIMEOUT here and the relay publishes it later.
    The transaction never waits on the broker; the database being down is a quick 503.
    """
    count = body.concept_count or get_settings().ROADMAP_DEFAULT_CONCEPTS
    async with safe_session() as session:
        row, created = await RoadmapRepository(session).create_once(
            body.topic, user.subject, count, idempotency_key
        )
        roadmap_id, roadmap_status = row["id"], row["status"]
        if not created:
            if (row["topic"], row["requested_concepts"]) != (body.topic, count):
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    "this Idempotency-Key was used for a different roadmap; use a new key",
                )
            response.headers["Idempotent-Replayed"] = "true"
            return RoadmapAccepted(id=roadmap_id, status=roadmap_status)
        await claim_in_progress_slot(session, user.subject)  # 429 and rollback over the user's cap
        message = await outbox.stage(session, RUN_WORKFLOW, str(roadmap_id))
        # In the same transaction, not through the Redis buffer: the request never waits on Redis.
        requested = task_events.record(
            "roadmap_requested", task_name="api.create_roadmap", task_id=str(roadmap_id), concept_count=count
        )
        await TaskLogRepository(session).add_many([requested])
    await outbox.publish([message])
    return RoadmapAccepted(id=roadmap_id, status=roadmap_status)


@router.get("/{roadmap_id}", response_model=RoadmapDetail, responses=NOT_FOUND)
async def get_roadmap(roadmap_id: uuid.UUID, user: CurrentUser) -> RoadmapDetail:
    owner = readable_by(user)
    view = await read(lambda db: RoadmapRepository.view(db, roadmap_id, owner=owner))
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"roadmap {roadmap_id} not found")
    counts: dict[str, int] = {}
    for concept in view.concepts:
        counts[concept["status"]] = counts.get(concept["status"], 0) + 1
    return RoadmapDetail.model_validate({**view.roadmap, "concepts": view.concepts, "concept_status": counts})


@router.get("", response_model=RoadmapPage)
async def list_roadmaps(
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> RoadmapPage:
    """The caller's roadmaps (an admin's: everyone's), newest first."""
    owner = readable_by(user)
    rows, total = await read(lambda db: RoadmapRepository.list(db, owner=owner, limit=limit, offset=offset))
    return RoadmapPage(
        items=[RoadmapSummary.model_validate(dict(r)) for r in rows], total=total, limit=limit, offset=offset
    )


# Checkpoint threads released per task: the roadmap ids travel in the outbox row's JSON.
_RELEASE_CHUNK = 500


async def erase(owner: str | EveryOwner, roadmap_id: uuid.UUID | None = None) -> Deletion:
    """Delete roadmaps (one, or all of ``owner``'s) and everything of theirs in this database in one
    transaction, with the release of their checkpoint threads staged in the same transaction; the
    workflow worker, which owns a checkpointer, releases them through the saver."""
    async with safe_session() as session:
        deletion = await RoadmapRepository(session).delete_finished(owner=owner, roadmap_id=roadmap_id)
        ids = [str(i) for i in deletion.deleted]
        staged = [
            await outbox.stage(session, RELEASE_CHECKPOINTS, ids[i : i + _RELEASE_CHUNK])
            for i in range(0, len(ids), _RELEASE_CHUNK)
        ]
    for table, n in deletion.rows.items():
        if n:
            RETENTION_ROWS_DELETED.labels(table, "deleted").inc(n)
    if ids:
        # Their events still in the Redis buffer are dropped, not written after the deletion.
        await asyncio.to_thread(task_events.forget, ids)
    await outbox.publish(staged)
    return deletion


def in_progress(detail: str) -> JSONResponse:
    return JSONResponse(
        status_code=status.HTTP_409_CONFLICT, content={"detail": detail, "reason": "roadmap_in_progress"}
    )


@router.delete(
    "/{roadmap_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, **ROADMAP_IN_PROGRESS},
)
async def delete_roadmap(roadmap_id: uuid.UUID, user: CurrentUser) -> Response:
    """Delete the roadmap, its concepts, its task events and (right after, on the workflow worker) its
    checkpoint thread. The owner or an admin; anyone else gets the 404 a missing roadmap gets.

    A roadmap still pending, planning or generating is refused with 409 instead of being cancelled:
    its workers may be mid-step (a content wave, a checkpoint write), and deleting under them would
    leave writes landing on nothing and a thread re-created after its release. Every roadmap ends
    completed or failed (the watchdog sees to it), so the client retries then.
    """
    deletion = await erase(readable_by(user), roadmap_id)
    if deletion.running:
        return in_progress(
            f"roadmap {roadmap_id} is still in progress; delete it once it is completed or failed"
        )
    if not deletion.deleted:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"roadmap {roadmap_id} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
