"""Deleting a roadmap on real workers leaves no row of it in any table, and a finished roadmap's thread
is released at once at CHECKPOINT_RETENTION_SECONDS=0 (the workers' default here)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from app.messaging.names import RUN_WORKFLOW
from app.messaging.send import send_by_name
from tests.support.auth import auth
from tests.support.workers import Worker, running_workers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("migrated_database")]
OWNER = "e2e-retention"


@pytest.fixture(scope="module")
def workers(migrated_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    with running_workers(tmp_path_factory.mktemp("retention"), 2) as started:
        yield started


async def rows_naming(db: asyncpg.Connection, value: str) -> dict[str, int]:
    """Every table of the database whose rows mention ``value`` anywhere (any column, as text)."""
    tables = await db.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
    )
    found = {}
    for row in tables:
        name = row["table_name"]
        n = await db.fetchval(f'SELECT count(*) FROM "{name}" t WHERE t::text LIKE $1', f"%{value}%")
        if n:
            found[name] = n
    return found


async def eventually(check, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not true after {timeout} s")
        await asyncio.sleep(0.2)


async def finished(client: httpx.AsyncClient, roadmap_id: str) -> str:
    state = ""

    async def done() -> bool:
        nonlocal state
        body = (await client.get(f"/api/v1/roadmaps/{roadmap_id}", headers=auth("user", OWNER))).json()
        state = body["status"]
        return state in ("completed", "failed")

    await eventually(done, f"roadmap {roadmap_id} finished", 90)
    return state


async def test_deleting_a_finished_roadmap_leaves_no_row_of_it_anywhere(
    workers: dict[str, Worker], client: httpx.AsyncClient, test_db: asyncpg.Connection
) -> None:
    created = await client.post(
        "/api/v1/roadmaps", json={"topic": "Erasure", "concept_count": 3}, headers=auth("user", OWNER)
    )
    assert created.status_code == 202, created.text
    roadmap_id = created.json()["id"]
    # While it runs: refused, and everything of it still there.
    early = await client.delete(f"/api/v1/roadmaps/{roadmap_id}", headers=auth("user", OWNER))
    assert early.status_code == 409 and early.json()["reason"] == "roadmap_in_progress"
    assert await finished(client, roadmap_id) == "completed"
    everywhere = await rows_naming(test_db, roadmap_id)
    assert {"roadmaps", "concepts", "task_logs"} <= set(everywhere), everywhere

    # Finished at 0 s retention: the worker that finished it released the thread already.
    async def thread_gone() -> bool:
        return not await test_db.fetchval("SELECT count(*) FROM checkpoints WHERE thread_id = $1", roadmap_id)

    await eventually(thread_gone, "the finished roadmap's thread released")

    # A late duplicate of its first task must not start it again from nothing (its thread is gone).
    send_by_name(RUN_WORKFLOW, [roadmap_id])
    await asyncio.sleep(2)
    row = await test_db.fetchrow("SELECT status FROM roadmaps WHERE id = $1", uuid.UUID(roadmap_id))
    assert row["status"] == "completed" and await thread_gone()

    deleted = await client.delete(f"/api/v1/roadmaps/{roadmap_id}", headers=auth("user", OWNER))
    assert deleted.status_code == 204

    async def nothing_left() -> bool:
        return not await rows_naming(test_db, roadmap_id)

    await eventually(nothing_left, f"no row naming {roadmap_id}")
    await asyncio.sleep(1.5)  # a flush of buffered events after the deletion would show now
    assert await rows_naming(test_db, roadmap_id) == {}
    assert (
        await client.delete(f"/api/v1/roadmaps/{roadmap_id}", headers=auth("user", OWNER))
    ).status_code == 404
