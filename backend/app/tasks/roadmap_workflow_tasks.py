"""Queue ``roadmap_workflow``: runs and resumes the LangGraph roadmap workflow."""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from app.core import async_runner
from app.core.celery_app import celery_app, queue_options
from app.core.orchestrator_factory import OrchestratorFactory
from app.db.session import safe_session
from app.repositories.roadmaps import RoadmapRepository
from app.tasks.names import RESUME_WORKFLOW, RUN_WORKFLOW
from app.tasks.probe import probe_database
from app.workflows import roadmap_graph

log = structlog.get_logger("app.tasks.workflow")


@celery_app.task(name=RUN_WORKFLOW, **queue_options("roadmap_workflow"))
def run_roadmap_workflow(roadmap_id: str) -> str:
    async def run() -> str | None:
        async with safe_session() as session:
            roadmap = await RoadmapRepository(session).get(uuid.UUID(roadmap_id))
            if roadmap is None:
                return None
            topic, count = roadmap.topic, roadmap.requested_concepts
        return await roadmap_graph.run(roadmap_id, topic, count)

    outcome = async_runner.run(run())
    OrchestratorFactory.stats()  # refresh the checkpointer pool gauges
    # Published only after the roadmap's commit (the outbox): a missing row was deleted, not late.
    return outcome or "missing"


@celery_app.task(name=RESUME_WORKFLOW, **queue_options("roadmap_workflow"))
def resume_roadmap(roadmap_id: str) -> str:
    outcome = async_runner.run(roadmap_graph.resume_after_content(roadmap_id))
    OrchestratorFactory.stats()
    log.info("roadmap_workflow_resumed", roadmap_id=roadmap_id, outcome=outcome)
    return outcome


# Its result is read (tests, diagnostics), unlike every other task's.
@celery_app.task(
    name="app.tasks.roadmap_workflow_tasks.probe", ignore_result=False, **queue_options("roadmap_workflow")
)
def probe(hold_seconds: float = 0.0, sleep_seconds: float = 0.0) -> dict[str, Any]:
    return async_runner.run(probe_database(hold_seconds, sleep_seconds))
