"""Concept generation in this process, on the real database: the semaphore, retries, short sessions."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from prometheus_client import REGISTRY

from app import sizing
from app.config.settings import get_settings
from app.db.session import safe_session
from app.repositories.roadmaps import RoadmapRepository
from app.tasks.content_generation_tasks import generate_content
from app.tools.llm import OfflineLLM
from app.tools.llm.base import LLMError
from app.tools.search.base import SearchResult
from app.tools.search.offline import OfflineSearch
from app.tools.search.web_search_router import WebSearchRouter

pytestmark = pytest.mark.usefixtures("migrated_database")


async def new_roadmap(concepts: int) -> str:
    async with safe_session() as session:
        repo = RoadmapRepository(session)
        roadmap = await repo.create("Concurrency", "tester", concepts)
        await repo.add_concepts(roadmap.id, await OfflineLLM().plan_concepts("Concurrency", concepts))
        return str(roadmap.id)


LLM_SECONDS = 1.0  # each concept's LLM call


def hold_buckets() -> tuple[float, float]:
    """Checkouts so far, and those back within 500 ms: half the LLM call, so a session held across it
    shows, with room for a loaded machine's scheduler (a 250 ms mark against a 0.3 s call was crossed
    once in a full CI run)."""
    label = {"service": "api"}
    total = REGISTRY.get_sample_value("db_connection_hold_seconds_count", label) or 0
    fast = REGISTRY.get_sample_value("db_connection_hold_seconds_bucket", {**label, "le": "0.5"}) or 0
    return total, fast


async def test_thirty_concepts_fifteen_at_a_time(test_db: asyncpg.Connection) -> None:
    roadmap_id = await new_roadmap(30)
    total_before, fast_before = hold_buckets()
    report = await generate_content(
        roadmap_id, llm=OfflineLLM(latency=LLM_SECONDS), router=WebSearchRouter(OfflineSearch())
    )
    assert report.concepts == 30 and report.written == 30 and report.failed == 0
    assert report.max_in_flight == get_settings().CONCEPT_CONCURRENCY_LIMIT == 15
    assert 2 * LLM_SECONDS <= report.seconds < 4 * LLM_SECONDS  # two waves, not thirty
    rows = await test_db.fetch(
        "SELECT status, attempts, content FROM concepts WHERE roadmap_id = $1", uuid.UUID(roadmap_id)
    )
    assert len(rows) == 30 and all(r["status"] == "completed" and r["attempts"] == 1 for r in rows)
    assert all("Generated offline" in r["content"] for r in rows)
    # No session was held across the LLM call: every checkout was back within half of it. And the
    # concepts of a wave were started and written together: a handful of checkouts, not 2 x 30.
    total_after, fast_after = hold_buckets()
    assert 4 <= total_after - total_before <= 12, total_after - total_before
    assert fast_after - fast_before == total_after - total_before


class FlakyLLM(OfflineLLM):
    """Fails the first attempt of every concept, and every attempt of concepts named in ``broken``."""

    def __init__(self, broken: set[int]) -> None:
        super().__init__()
        self.broken = broken
        self.calls: dict[str, int] = {}

    async def write_concept(self, topic: str, concept: str, sources: list[SearchResult]) -> str:
        self.calls[concept] = self.calls.get(concept, 0) + 1
        position = int(concept.rsplit("#", 1)[1]) if "#" in concept else -1
        if self.calls[concept] == 1 or position in self.broken:
            raise LLMError(f"simulated failure for {concept}")
        return await super().write_concept(topic, concept, sources)


async def test_failed_concepts_are_retried_and_recorded_without_failing_others(
    test_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCEPT_MAX_ATTEMPTS", "3")
    get_settings.cache_clear()
    async with safe_session() as session:
        repo = RoadmapRepository(session)
        roadmap = await repo.create("Flaky", "tester", 6)
        await repo.add_concepts(roadmap.id, [f"concept #{i}" for i in range(6)])
    llm = FlakyLLM(broken={2, 4})
    report = await generate_content(str(roadmap.id), llm=llm, router=WebSearchRouter(OfflineSearch()))
    assert (report.written, report.failed) == (4, 2)
    rows = await test_db.fetch(
        "SELECT position, status, attempts, error FROM concepts WHERE roadmap_id = $1 ORDER BY position",
        roadmap.id,
    )
    for row in rows:
        if row["position"] in (2, 4):
            assert row["status"] == "failed" and row["attempts"] == 3
            assert "simulated failure" in row["error"]
        else:
            assert row["status"] == "completed" and row["attempts"] == 2 and row["error"] is None
    # A second run (a redelivery) only touches what is unfinished: the written ones are not written
    # twice, and the two that failed after all their attempts stay failed (no more LLM calls).
    again = await generate_content(str(roadmap.id), llm=OfflineLLM(), router=WebSearchRouter(OfflineSearch()))
    assert (again.concepts, again.written, again.failed) == (0, 0, 0)
    statuses = await test_db.fetch("SELECT status FROM concepts WHERE roadmap_id = $1", roadmap.id)
    assert sorted(r["status"] for r in statuses) == ["completed"] * 4 + ["failed"] * 2


async def test_a_wave_stays_below_its_pool_high_usage_mark(test_db: asyncpg.Connection) -> None:
    """15 concepts at once on a 3-connection pool: never more checkouts than fan_out_checkouts."""
    from sqlalchemy import event

    from app.db.engine import get_engine

    roadmap_id = await new_roadmap(30)
    pool = get_engine().sync_engine.pool
    in_use = peak = 0

    def out(*_: object) -> None:
        nonlocal in_use, peak
        in_use += 1
        peak = max(peak, in_use)

    def back(*_: object) -> None:
        nonlocal in_use
        in_use -= 1

    event.listen(pool, "checkout", out)
    event.listen(pool, "checkin", back)
    try:
        report = await generate_content(
            roadmap_id, llm=OfflineLLM(latency=0.1), router=WebSearchRouter(OfflineSearch())
        )
    finally:
        event.remove(pool, "checkout", out)
        event.remove(pool, "checkin", back)
    settings = get_settings()
    assert report.written == 30 and report.max_in_flight == 15
    limit = sizing.fan_out_checkouts(settings)
    assert limit < settings.DB_POOL_HIGH_USAGE_RATIO * sizing.pool_sizing(settings).max_connections
    assert 1 <= peak <= limit, (peak, limit)


class NulForOneLLM(OfflineLLM):
    """Writes content PostgreSQL refuses (a NUL byte) for the third concept it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def write_concept(self, topic: str, concept: str, sources: list[SearchResult]) -> str:
        self.calls += 1
        text = await super().write_concept(topic, concept, sources)
        return text + "\x00" if self.calls == 3 else text


async def test_a_value_the_database_refuses_fails_its_concept_not_its_wave(
    test_db: asyncpg.Connection,
) -> None:
    roadmap_id = await new_roadmap(6)
    report = await generate_content(roadmap_id, llm=NulForOneLLM(), router=WebSearchRouter(OfflineSearch()))
    assert report.written == 5 and report.failed == 1
    statuses = await test_db.fetch("SELECT status FROM concepts WHERE roadmap_id = $1", uuid.UUID(roadmap_id))
    assert sorted(r["status"] for r in statuses).count("completed") == 5
