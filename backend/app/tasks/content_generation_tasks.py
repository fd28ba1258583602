"""Queue ``content_generation``: a roadmap's concept content, at most CONCEPT_CONCURRENCY_LIMIT at once.

About 30 concepts per roadmap; an ``asyncio.Semaphore`` lets CONCEPT_CONCURRENCY_LIMIT run at a
time and ``asyncio.gather(..., return_exceptions=True)`` keeps one concept's failure from failing the
others. A failed concept is retried (CONCEPT_MAX_ATTEMPTS) and, if it still fails, recorded as failed.

A database outage is not a concept's failure: its reads and writes wait the outage out
(CONTENT_DB_OUTAGE_SECONDS, without spending an attempt or redoing the LLM call); past that the task
fails with the database error and Celery retries it, and the retry takes up the concepts that were not
finished. The workflow is resumed only when every concept is written or has failed for real.

A database session is held only around each read and write, never across the web search or the LLM
call: with 1 s of LLM latency a session held across it would keep 15 connections busy per roadmap,
and ``db_connection_hold_seconds`` would show seconds instead of milliseconds.

Concepts that start or finish together are marked started and written together (``app.db.batch``:
one statement per wave, not one per concept), and the task's concurrent checkouts are bounded below
its pool's high-usage mark (``app.sizing.fan_out_checkouts``), so a wave of 15 concepts queues briefly
for a slot instead of filling a 10-connection pool.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_exponential_jitter,
)

from app import runtime, sizing
from app.config.settings import get_settings
from app.core.celery_app import celery_app
from app.db.batch import Coalescer
from app.db.engine import process_engine
from app.db.errors import is_database_unavailable
from app.db.session import limit_checkouts, safe_session
from app.messaging import outbox, task_events
from app.messaging.names import GENERATE_CONTENT, RESUME_WORKFLOW
from app.repositories.roadmaps import RoadmapRepository
from app.repositories.task_logs import TaskLogRepository
from app.tools.llm import RoadmapLLM, get_llm
from app.tools.search.web_search_router import WebSearchRouter

log = structlog.get_logger("app.tasks.content")
T = TypeVar("T")


@dataclass
class ContentReport:
    roadmap_id: str
    concepts: int
    written: int
    failed: int  # failed for real: CONCEPT_MAX_ATTEMPTS tries, recorded as failed
    unfinished: int  # cut off by a database outage: left to the task's retry
    max_in_flight: int
    seconds: float


async def _outlasting_outage(operation: Callable[[], Awaitable[T]]) -> T:
    """``operation()``, repeated while the database is unavailable, for up to CONTENT_DB_OUTAGE_SECONDS.

    Any other error, or an outage that lasts longer, is raised: the first to the concept's own retry,
    the second to the task's (DatabaseTask), which runs again once the database is back.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_database_unavailable),
        stop=stop_after_delay(get_settings().CONTENT_DB_OUTAGE_SECONDS),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
        reraise=True,
    ):
        with attempt:
            return await operation()
    raise AssertionError("unreachable")


async def _start_concepts(ids: dict[uuid.UUID, None]) -> dict[uuid.UUID, None]:
    async with safe_session() as session:
        return await RoadmapRepository(session).start_concepts(list(ids))


@dataclass(frozen=True)
class _Content:
    """A concept's content and the ``concept_written`` event that reports it."""

    text: str
    event: dict[str, Any]


async def _write_contents(items: dict[uuid.UUID, _Content]) -> dict[uuid.UUID, bool | BaseException]:
    """The wave's contents in one statement; if that fails, one by one, so a value the database refuses
    fails its own concept and not the fourteen others of its wave.

    Each written concept's ``concept_written`` row commits in the same transaction as its content: a
    worker killed right after the commit can no longer lose the event (the Redis buffer would).
    """
    try:
        async with safe_session() as session:
            written = await RoadmapRepository(session).write_contents({k: v.text for k, v in items.items()})
            await TaskLogRepository(session).add_many([items[k].event for k, ok in written.items() if ok])
            return dict(written)
    except Exception as error:
        if len(items) == 1 or is_database_unavailable(error):
            raise
    results: dict[uuid.UUID, bool | BaseException] = {}
    for concept_id, item in items.items():
        try:
            async with safe_session() as session:
                results[concept_id] = await RoadmapRepository(session).write_content(concept_id, item.text)
                if results[concept_id]:
                    await TaskLogRepository(session).add_many([item.event])
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
    contents: Coalescer[uuid.UUID, _Content, bool] = field(default_factory=lambda: Coalescer(_write_contents))
    in_flight: int = 0
    peak: int = 0
    failed: int = 0

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
    """One concept: its search and LLM call (CONCEPT_MAX_ATTEMPTS tries), then its write.

    Returns whether this call wrote the content, False when the concept failed for real (recorded as
    failed); raises only when the database stayed unavailable, leaving the concept to the task's retry.
    """
    attempts = 0
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(get_settings().CONCEPT_MAX_ATTEMPTS),
            wait=wait_exponential(multiplier=0.4, max=2.0),
            # A database outage is not the concept's failure: it goes up at once (a cancellation too).
            retry=retry_if_exception(lambda e: isinstance(e, Exception) and not is_database_unavailable(e)),
            reraise=True,
        ):
            with attempt:
                attempts = attempt.retry_state.attempt_number
                async with run.slot():
                    # Marked started (with the wave's other concepts) while the search runs; a start that
                    # fails cancels the search, so nothing runs outside the slot or spends a credit twice.
                    search = asyncio.ensure_future(router.search(f"{topic} {title}"))  # short sessions inside
                    try:
                        await _outlasting_outage(partial(run.starts.submit, concept_id, None))
                    except BaseException:
                        search.cancel()
                        raise
                    outcome = await search
                    content = await llm.write_concept(topic, title, outcome.results)
    except Exception as exc:
        if is_database_unavailable(exc):
            raise
        return await _failed_for_real(roadmap_id, concept_id, f"{type(exc).__name__}: {exc}", attempts, run)
    # The content is paid for: an outage now delays its write, it does not redo the LLM call.
    event = task_events.record(
        "concept_written", task_name="generate_roadmap_content", task_id=roadmap_id,
        queue="content_generation", concept_id=str(concept_id), attempts=attempts, search=outcome.reason,
    )  # fmt: skip
    try:
        written = await _outlasting_outage(partial(run.contents.submit, concept_id, _Content(content, event)))
    except Exception as exc:
        if is_database_unavailable(exc):
            raise
        # A value the database refuses (app.db.batch wrote the rest of the wave): this concept's.
        return await _failed_for_real(roadmap_id, concept_id, f"{type(exc).__name__}: {exc}", attempts, run)
    return written


async def _failed_for_real(
    roadmap_id: str, concept_id: uuid.UUID, error: str, attempts: int, run: _Run
) -> bool:
    """Record a concept that failed after its attempts (waiting out an outage to do so)."""
    await _outlasting_outage(partial(_fail_concept, concept_id, error))
    run.failed += 1
    task_events.emit(
        "concept_failed", task_name="generate_roadmap_content", task_id=roadmap_id,
        queue="content_generation", level="error", concept_id=str(concept_id), error=error,
        attempts=attempts,
    )  # fmt: skip
    return False


async def _fail_concept(concept_id: uuid.UUID, error: str) -> None:
    async with safe_session() as session:
        await RoadmapRepository(session).fail_concept(concept_id, error)


async def generate_content(
    roadmap_id: str, *, llm: RoadmapLLM | None = None, router: WebSearchRouter | None = None
) -> ContentReport:
    settings = get_settings()
    llm = llm or get_llm(settings)
    router = router or WebSearchRouter(settings=settings)

    async def load() -> tuple[str, list[tuple[uuid.UUID, str]]]:
        async with safe_session() as session:
            repo = RoadmapRepository(session)
            roadmap = await repo.get(uuid.UUID(roadmap_id))
            if roadmap is None:
                raise LookupError(f"roadmap {roadmap_id} does not exist")
            return roadmap.topic, [(c.id, c.title) for c in await repo.unfinished_concepts(roadmap.id)]

    topic, todo = await _outlasting_outage(load)
    run = _Run(asyncio.Semaphore(settings.CONCEPT_CONCURRENCY_LIMIT))

    started = time.perf_counter()
    with limit_checkouts(sizing.fan_out_checkouts(settings, process_engine().service)):
        results = await asyncio.gather(
            *(_generate_one(roadmap_id, topic, cid, title, llm, router, run) for cid, title in todo),
            return_exceptions=True,
        )
    errors = [r for r in results if isinstance(r, BaseException)]
    report = ContentReport(
        roadmap_id=roadmap_id,
        concepts=len(todo),
        written=sum(1 for r in results if r is True),
        failed=run.failed,
        unfinished=len(errors),
        max_in_flight=run.peak,
        seconds=round(time.perf_counter() - started, 3),
    )
    task_events.emit(
        "content_generated", task_name="generate_roadmap_content", task_id=roadmap_id,
        queue="content_generation", level="warning" if errors else "info", **report.__dict__,
    )  # fmt: skip
    if errors:
        # Concepts left unfinished (the database stayed away): the task's retry takes them up; the
        # workflow must not be resumed, or it would count them as failed.
        raise errors[0]
    return report


@celery_app.task(name=GENERATE_CONTENT)
def generate_roadmap_content(roadmap_id: str) -> dict[str, Any]:
    report = runtime.current().run(generate_content(roadmap_id))
    log.info("roadmap_content_generated", **report.__dict__)
    # Every concept is written or failed for real: the workflow assembles. Stored before it is
    # published, so a broker outage now delays the resume instead of leaving the roadmap generating.
    runtime.current().run(outbox.send(RESUME_WORKFLOW, roadmap_id))
    return report.__dict__
