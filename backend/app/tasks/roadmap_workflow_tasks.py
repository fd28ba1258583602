"""Queue ``roadmap_workflow``: runs and resumes the LangGraph roadmap workflow."""

from __future__ import annotations

import uuid

import structlog

from app import runtime
from app.core.celery_app import celery_app
from app.core.orchestrator_factory import get_checkpointer
from app.db.models import FINISHED
from app.db.session import safe_session
from app.messaging import retention
from app.messaging.names import RELEASE_CHECKPOINTS, RESUME_WORKFLOW, RUN_WORKFLOW
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
            if roadmap.status in FINISHED:
                # A duplicate delivery after the end: its thread may be released already, and the graph
                # would start again from nothing (analyse sets "planning" on a finished roadmap).
                return "finished"
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


@celery_app.task(name=RELEASE_CHECKPOINTS)
def release_checkpoints(roadmap_ids: list[str] | None = None) -> dict[str, object]:
    """The checkpoint threads of ``roadmap_ids`` (deleted roadmaps), or every thread (the retention
    round's sweep), released when nothing can need them: see app.messaging.retention."""

    async def release() -> retention.CheckpointSweep:
        saver = await get_checkpointer()
        if roadmap_ids:
            sweep = await retention.release_threads(saver, roadmap_ids, reason="deleted")
            # Events that were still in the Redis buffer when the roadmap was deleted.
            await retention.delete_task_logs(roadmap_ids)
            return sweep
        return await retention.sweep_checkpoints(saver)

    sweep = runtime.current().run(release())
    return {"threads_seen": sweep.threads_seen, "threads_released": sweep.threads_released, **sweep.rows}
