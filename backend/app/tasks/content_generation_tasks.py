"""Queue ``content_generation``: a roadmap's concept content, at most CONCEPT_CONCURRENCY_LIMIT at once.

About 30 concepts per roadmap; an ``asyncio.Semaphore`` lets CONCEPT_CONCURRENCY_LIMIT (15) run at a
time and ``asyncio.gather(..., return_exceptions=True)`` keeps one concept's failure from failing the
others. A failed concept is retried (CONCEPT_MAX_ATTEMPTS) and, if it still fails, recorded as failed.

A database session is held only around each read and write, never across the web search or the LLM
call: with 1 s of LLM latency a session held across it would keep 15 connections busy per roadmap,
and ``db_connection_hold_seconds`` would show seconds instead of milliseconds.

Concepts that start or finish together are marked started and written together (``app.db.batch``:
one statement per wave, not one per concept), and the task's concurrent checkouts are bounded below
its pool's high-usage mark (``Settings.fan_out_checkouts``), so a wave of 15 concepts queues briefly
for a slot instead of filling a 10-connection pool.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

from app.config.settings import get_settings
from app.core import async_runner
from app.core.celery_app import celery_app, queue_options
from app.db.batch import Coalescer
from app.db.engine import current_service
from app.db.session import limit_checkouts, safe_session
from app.repositories.roadmaps import RoadmapRepository
from app.tasks import task_events
from app.tasks.probe import probe_database
from app.tools.llm import RoadmapLLM, get_llm
from app.tools.search.web_search_router import WebSearchRouter

log = structlog.get_logger("app.tasks.content")


@dataclass
class ContentReport:
    roadmap_id: str
    concepts: int
    written: int
    failed: int
    max_in_flight: int
    seconds: float


async def _start_concepts(ids: dict[uuid.UUID, None]) -> dict[uuid.UUID, None]:
    async with safe_session() as session:
        return await RoadmapRepository(session).start_concepts(list(ids))


async def _write_contents(contents: dict[uuid.UUID, str]) -> dict[uuid.UUID, bool | BaseException]:
    """The wave's contents in one statement; if that fails, one by one, so a value the database refuses
    fails its own concept and not the fourteen others of its wave."""
    try:
        async with safe_session() as session:
            return dict(await RoadmapRepository(session).write_contents(contents))
    except Exception:
        if len(contents) == 1:
            raise
    results: dict[uuid.UUID, bool | BaseException] = {}
    for concept_id, content in contents.items():
        try:
            async with safe_session() as session:
                results[concept_id] = await RoadmapRepository(session).write_content(concept_id, content)
        except Exception as error:  # noqa: BLE001 - handed to this concept's caller
            results[concept_id] = error
    return results


@dataclass
class _Run:
    """One content task's shared state: its concept slots and its coalesced writes.

    A slot (CONCEPT_CONCURRENCY_LIMIT of them) covers a concept's search and LLM call, the slow part;
    its write happens after the slot is handed to the next concept, so a wave's writes never delay
    the next wave's calls.
    """

    slots: asyncio.Semaphore
    starts: Coalescer[uuid.UUID, None, None] = field(default_factory=lambda: Coalescer(_start_concepts))
    contents: Coalescer[uuid.UUID, str, bool] = field(default_factory=lambda: Coalescer(_write_contents))
    in_flight: int = 0
    peak: int = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self.slots:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1


async def _generate_one(
    roadmap_id: str,
    topic: str,
    concept_id: uuid.UUID,
    title: str,
    llm: RoadmapLLM,
    router: WebSearchRouter,
    run: _Run,
) -> bool:
    settings = get_settings()
    for attempt in range(1, settings.CONCEPT_MAX_ATTEMPTS + 1):
        try:
            async with run.slot():
                # Marked started (with the wave's other concepts) while the search runs; a start that
                # fails cancels the search, so nothing runs outside the slot or spends a credit twice.
                search = asyncio.ensure_future(router.search(f"{topic} {title}"))  # short sessions inside
                try:
                    await run.starts.submit(concept_id, None)
                except BaseException:
                    search.cancel()
                    raise
                outcome = await search
                content = await llm.write_concept(topic, title, outcome.results)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if attempt == settings.CONCEPT_MAX_ATTEMPTS:
                async with safe_session() as session:
                    await RoadmapRepository(session).fail_concept(concept_id, error)
                task_events.emit(
                    "concept_failed", task_name="generate_roadmap_content", task_id=roadmap_id,
                    queue="content_generation", level="error", concept_id=str(concept_id), error=error,
                    attempts=attempt,
                )  # fmt: skip
                raise
            await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
            continue
        written = await run.contents.submit(concept_id, content)
        if written:
            task_events.emit(
                "concept_written", task_name="generate_roadmap_content", task_id=roadmap_id,
                queue="content_generation", concept_id=str(concept_id), attempts=attempt,
                search=outcome.reason,
            )  # fmt: skip
        return written
    return False


async def generate_content(
    roadmap_id: str, *, llm: RoadmapLLM | None = None, router: WebSearchRouter | None = None
) -> ContentReport:
    settings = get_settings()
    llm = llm or get_llm(settings)
    router = router or WebSearchRouter(settings=settings)
    async with safe_session() as session:
        repo = RoadmapRepository(session)
        roadmap = await repo.get(uuid.UUID(roadmap_id))
        if roadmap is None:
            raise LookupError(f"roadmap {roadmap_id} does not exist")
        topic = roadmap.topic
        todo = [(c.id, c.title) for c in await repo.unfinished_concepts(roadmap.id)]

    run = _Run(asyncio.Semaphore(settings.CONCEPT_CONCURRENCY_LIMIT))

    started = time.perf_counter()
    with limit_checkouts(settings.fan_out_checkouts(current_service())):
        results = await asyncio.gather(
            *(_generate_one(roadmap_id, topic, cid, title, llm, router, run) for cid, title in todo),
            return_exceptions=True,
        )
    report = ContentReport(
        roadmap_id=roadmap_id,
        concepts=len(todo),
        written=sum(1 for r in results if r is True),
        failed=sum(1 for r in results if isinstance(r, BaseException)),
        max_in_flight=run.peak,
        seconds=round(time.perf_counter() - started, 3),
    )
    task_events.emit(
        "content_generated", task_name="generate_roadmap_content", task_id=roadmap_id,
        queue="content_generation", **report.__dict__,
    )  # fmt: skip
    return report


@celery_app.task(
    name="app.tasks.content_generation_tasks.generate_roadmap_content",
    **queue_options("content_generation"),
)
def generate_roadmap_content(roadmap_id: str) -> dict[str, Any]:
    report = async_runner.run(generate_content(roadmap_id))
    log.info("roadmap_content_generated", **report.__dict__)
    from app.tasks.roadmap_workflow_tasks import resume_roadmap

    resume_roadmap.delay(roadmap_id)
    return report.__dict__


@celery_app.task(name="app.tasks.content_generation_tasks.probe", **queue_options("content_generation"))
def probe(hold_seconds: float = 0.0, sleep_seconds: float = 0.0) -> dict[str, Any]:
    return async_runner.run(probe_database(hold_seconds, sleep_seconds))
