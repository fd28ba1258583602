"""The LangGraph checkpointer pool: configured once, named, bounded by max_size, closed at the end."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
import structlog

from app import runtime
from app.config.settings import get_settings
from app.core.orchestrator_factory import OrchestratorFactory, checkpointer_stats
from app.workflows.roadmap_graph import compiled_graph, thread_config

pytestmark = pytest.mark.usefixtures("migrated_database")


async def test_pool_is_configured_once_and_stays_within_max_size(
    pg: asyncpg.Connection, test_db_name: str
) -> None:
    settings = get_settings()
    with structlog.testing.capture_logs() as logs:
        runtime.current().name_service("celery_workflow")
        # Concurrent first users share one opening: one pool, one log line.
        factories = await asyncio.gather(*(OrchestratorFactory.for_this_process() for _ in range(5)))
        assert all(f is factories[0] for f in factories)
        assert await OrchestratorFactory.for_this_process() is factories[0]
    configured = [e for e in logs if e["event"] == "langgraph_connection_pool_configured"]
    assert len(configured) == 1
    assert (
        configured[0]["environment"] == "test"
        and configured[0]["max_size"] == settings.LANGGRAPH_POOL_MAX_SIZE
    )

    graph = await compiled_graph()
    name = "test.celery_workflow.langgraph"
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            n = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                test_db_name, name,
            )  # fmt: skip
            peak = max(peak, n)
            assert checkpointer_stats().pool_size <= settings.LANGGRAPH_POOL_MAX_SIZE
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(graph.aget_state(thread_config(str(uuid.uuid4()))) for _ in range(40)))
    done.set()
    await watcher
    assert 1 <= peak <= settings.LANGGRAPH_POOL_MAX_SIZE
    stats = checkpointer_stats()
    assert stats.opened is True and stats.max_size == 3 and stats.in_use == 0

    await runtime.current().aclose()
    for _ in range(50):
        if not await pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            test_db_name, name,
        ):  # fmt: skip
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("checkpointer connections left open after close()")
    assert checkpointer_stats().opened is False
