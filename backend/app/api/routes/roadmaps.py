"""``/api/v1/roadmaps``: create (202, workflow enqueued), read one with its concepts, list."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from starlette.concurrency import run_in_threadpool

from app.api.deps import CurrentUser, SessionDep
from app.api.routes import API_V1
from app.config.settings import get_settings
from app.db.session import read
from app.repositories.roadmaps import RoadmapRepository
from app.schemas.errors import AUTH, BAD_BODY, NOT_FOUND, UNAVAILABLE
from app.schemas.roadmaps import (
    RoadmapAccepted,
    RoadmapCreate,
    RoadmapDetail,
    RoadmapPage,
    RoadmapSummary,
)
from app.tasks import task_events

router = APIRouter(prefix=f"{API_V1}/roadmaps", tags=["roadmaps"], responses=UNAVAILABLE)


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, response_model=RoadmapAccepted, responses={**AUTH, **BAD_BODY}
)
async def create_roadmap(body: RoadmapCreate, session: SessionDep, user: CurrentUser) -> RoadmapAccepted:
    from app.tasks.roadmap_workflow_tasks import run_roadmap_workflow

    count = body.concept_count or get_settings().ROADMAP_DEFAULT_CONCEPTS
    roadmap = await RoadmapRepository(session).create(body.topic, user.subject, count)
    # Enqueued before the commit: if the broker is down nothing is stored and the client gets a 503;
    # the worker retries briefly if it runs before the commit is visible.
    await run_in_threadpool(run_roadmap_workflow.delay, str(roadmap.id))
    await run_in_threadpool(
        task_events.emit, "roadmap_requested", task_name="api.create_roadmap", task_id=str(roadmap.id),
        owner=user.subject, concept_count=count,
    )  # fmt: skip
    return RoadmapAccepted(id=roadmap.id, status=roadmap.status)


@router.get("/{roadmap_id}", response_model=RoadmapDetail, responses=NOT_FOUND)
async def get_roadmap(roadmap_id: uuid.UUID) -> RoadmapDetail:
    view = await read(lambda db: RoadmapRepository(db).view(roadmap_id))
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"roadmap {roadmap_id} not found")
    counts: dict[str, int] = {}
    for concept in view.concepts:
        counts[concept["status"]] = counts.get(concept["status"], 0) + 1
    return RoadmapDetail.model_validate({**view.roadmap, "concepts": view.concepts, "concept_status": counts})


@router.get("", response_model=RoadmapPage)
async def list_roadmaps(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> RoadmapPage:
    rows, total = await read(lambda db: RoadmapRepository(db).list(limit=limit, offset=offset))
    return RoadmapPage(
        items=[RoadmapSummary.model_validate(dict(r)) for r in rows], total=total, limit=limit, offset=offset
    )
