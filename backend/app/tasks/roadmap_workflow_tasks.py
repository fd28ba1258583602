"""Queue ``roadmap_workflow``: runs and resumes the LangGraph roadmap workflow."""

from __future__ import annotations

import uuid

import structlog

from app import runtime
from app.core.celery_app import celery_app
from app.db.session import safe_session
from app.messaging.names import RESUME_WORKFLOW, RUN_WORKFLOW
from app.repositories.roadmaps import RoadmapRepository
from app.workflows import roadmap_graph

log = structlog.get_logger("app.tasks.workflow")


@celery_app.task(name=RUN_WORKFLOW)
def run_roadmap_workflow(roadmap_id: str) -> str:
    async def run() -> str | None:
        async with safe_session() as session:
            roadmap = await RoadmapRepository(session).get(uuid.UUID(roadmap_id))
            if roadmap is None:
                return None
            topic, count = roadmap.topic, roadmap.requested_concepts
        return await roadmap_graph.run(roadmap_id, topic, count)

    outcome = runtime.current().run(run())
    # Published only after the roadmap's commit (the outbox): a missing row was deleted, not late.
    return outcome or "missing"


@celery_app.task(name=RESUME_WORKFLOW)
def resume_roadmap(roadmap_id: str) -> str:
    outcome = runtime.current().run(roadmap_graph.resume_after_content(roadmap_id))
    log.info("roadmap_workflow_resumed", roadmap_id=roadmap_id, outcome=outcome)
    return outcome
