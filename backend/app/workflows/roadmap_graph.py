"""The roadmap workflow: analyse -> plan_concepts -> dispatch_content -> (content phase) -> assemble.

Checkpointed per roadmap (thread id = roadmap id) in PostgreSQL through the orchestrator factory's
pool. A worker killed mid-run resumes, on redelivery, from the last completed step, not from scratch.

Content generation runs on its own queue. The graph stops before ``assemble`` (``interrupt_before``) and
the content task resumes it when every concept has been tried. Each node holds a database session only
around its own reads and writes, never across the LLM call.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from app.core.orchestrator_factory import get_checkpointer
from app.db.models import FINISHED, UNFINISHED_CONCEPT, ConceptStatus, RoadmapStatus
from app.db.session import safe_session
from app.messaging import outbox, retention, task_events
from app.messaging.names import GENERATE_CONTENT
from app.repositories.roadmaps import RoadmapRepository
from app.tools.llm import get_llm


class RoadmapState(TypedDict, total=False):
    roadmap_id: str
    topic: str
    concept_count: int
    titles: list[str]
    outcome: str


def _event(node: str, state: RoadmapState, **extra: Any) -> None:
    task_events.emit(
        "workflow_node",
        task_name="roadmap_workflow",
        task_id=state.get("roadmap_id"),
        queue="roadmap_workflow",
        node=node,
        pid=os.getpid(),
        **extra,
    )


async def analyse(state: RoadmapState) -> RoadmapState:
    _event("analyse", state)
    topic = re.sub(r"\s+", " ", state["topic"]).strip()
    async with safe_session() as session:
        await RoadmapRepository(session).set_status(uuid.UUID(state["roadmap_id"]), RoadmapStatus.PLANNING)
    return {"topic": topic}


async def plan_concepts(state: RoadmapState) -> RoadmapState:
    _event("plan_concepts", state)
    titles = await get_llm().plan_concepts(state["topic"], state["concept_count"])  # no session held
    async with safe_session() as session:
        await RoadmapRepository(session).add_concepts(uuid.UUID(state["roadmap_id"]), titles)
    return {"titles": titles}


async def dispatch_content(state: RoadmapState) -> RoadmapState:
    _event("dispatch_content", state)
    # The status and the content task commit together (the outbox): no roadmap is left "generating"
    # with no task on its way, whatever the broker does. Repeating this after a crash enqueues the
    # task twice; its writes are conditional, so a concept's content is still stored exactly once.
    async with safe_session() as session:
        await RoadmapRepository(session).set_status(uuid.UUID(state["roadmap_id"]), RoadmapStatus.GENERATING)
        message = await outbox.stage(session, GENERATE_CONTENT, state["roadmap_id"])
    await outbox.publish([message], source="worker")
    return {}


async def assemble(state: RoadmapState) -> RoadmapState:
    _event("assemble", state)
    roadmap_id = uuid.UUID(state["roadmap_id"])
    async with safe_session() as session:
        repo = RoadmapRepository(session)
        counts = await repo.concept_counts(roadmap_id)
        # Only concepts that failed for real: resume_after_content never assembles unfinished ones.
        failed = counts.get(ConceptStatus.FAILED, 0)
        if failed:
            await repo.set_status(
                roadmap_id, RoadmapStatus.FAILED, f"{failed} of {sum(counts.values())} concepts failed"
            )
        else:
            await repo.set_status(roadmap_id, RoadmapStatus.COMPLETED)
    # A plain str in the checkpointed state: the saver serialises it without knowing our enum.
    return {"outcome": (RoadmapStatus.FAILED if failed else RoadmapStatus.COMPLETED).value}


def build_graph() -> StateGraph:
    graph = StateGraph(RoadmapState)
    graph.add_node("analyse", analyse)
    graph.add_node("plan_concepts", plan_concepts)
    graph.add_node("dispatch_content", dispatch_content)
    graph.add_node("assemble", assemble)
    graph.add_edge(START, "analyse")
    graph.add_edge("analyse", "plan_concepts")
    graph.add_edge("plan_concepts", "dispatch_content")
    graph.add_edge("dispatch_content", "assemble")
    graph.add_edge("assemble", END)
    return graph


async def compiled_graph() -> CompiledStateGraph:
    checkpointer = await get_checkpointer()
    return build_graph().compile(checkpointer=checkpointer, interrupt_before=["assemble"])


def thread_config(roadmap_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": roadmap_id}}


async def run(roadmap_id: str, topic: str, concept_count: int) -> str:
    """Start the workflow, or resume it from its last checkpoint. Returns where it stands."""
    graph = await compiled_graph()
    config = thread_config(roadmap_id)
    snapshot = await graph.aget_state(config)
    if snapshot.next == ("assemble",):
        return "awaiting_content"  # content phase running; the content task resumes the graph
    if snapshot.values and not snapshot.next:
        return "finished"
    initial = None if snapshot.next else {
        "roadmap_id": roadmap_id, "topic": topic, "concept_count": concept_count
    }  # fmt: skip
    # durability="sync": a step's checkpoint is stored before the next step starts, so a worker killed
    # during a step resumes exactly there.
    await graph.ainvoke(initial, config, durability="sync")
    return "awaiting_content"


async def resume_after_content(roadmap_id: str) -> str:
    graph = await compiled_graph()
    config = thread_config(roadmap_id)
    snapshot = await graph.aget_state(config)
    if snapshot.next != ("assemble",):
        return "finished" if snapshot.values and not snapshot.next else "not_waiting"
    async with safe_session() as session:
        counts = await RoadmapRepository(session).concept_counts(uuid.UUID(roadmap_id))
        if sum(counts.get(status, 0) for status in UNFINISHED_CONCEPT):
            # A resume that came early (a duplicate, the watchdog): the content is not finished, so
            # the content task runs again for what is left, instead of those concepts counting as failed.
            message = await outbox.stage(session, GENERATE_CONTENT, roadmap_id)
        else:
            message = None
    if message is not None:
        await outbox.publish([message], source="worker")
        return "content_unfinished"
    result = await graph.ainvoke(None, config, durability="sync")
    outcome = str(result.get("outcome", "finished"))
    if outcome in FINISHED:
        # Nothing resumes a finished roadmap: its thread goes now (CHECKPOINT_RETENTION_SECONDS=0) or
        # to the sweep after the window.
        await retention.release_finished_thread(await get_checkpointer(), roadmap_id)
    return outcome
