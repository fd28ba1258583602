"""Data lifecycle, on the real database and Redis, in this process: checkpoint threads released through
the saver once nothing can resume them, task_logs purged in bounded batches on one connection, the
watchdog still resuming from a checkpoint, roadmaps deleted through the API, and what the tables hold.

The workflow runs here (offline providers), as a workflow worker's child would run it; the
end-to-end deletion on real workers is in test_retention_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from app import runtime
from app.config.settings import get_settings
from app.core.metrics import RETENTION_ROWS_DELETED
from app.core.orchestrator_factory import get_checkpointer
from app.db.engine import pool_snapshot
from app.messaging import retention, watchdog
from app.messaging.names import GENERATE_CONTENT, RELEASE_CHECKPOINTS
from app.tasks.content_generation_tasks import generate_content
from app.workflows import roadmap_graph
from tests.support.auth import auth
from tests.test_outbox import drain, queued

pytestmark = pytest.mark.usefixtures("migrated_database")
TABLES = retention.CHECKPOINT_TABLES


@pytest.fixture(autouse=True)
def empty_queues() -> Iterator[None]:
    """What these tests publish is looked at, never run: no later test's worker may get it."""
    for queue in ("roadmap_workflow", "content_generation", "logs"):
        drain(queue)
    yield
    for queue in ("roadmap_workflow", "content_generation", "logs"):
        drain(queue)


async def thread_rows(db: asyncpg.Connection, thread_id: str) -> dict[str, int]:
    return {t: await db.fetchval(f"SELECT count(*) FROM {t} WHERE thread_id = $1", thread_id) for t in TABLES}


async def create(client: httpx.AsyncClient, owner: str = "tester", concepts: int = 2) -> str:
    response = await client.post(
        "/api/v1/roadmaps",
        json={"topic": "Retention", "concept_count": concepts},
        headers=auth("user", owner),
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def planned(client: httpx.AsyncClient, owner: str = "tester") -> str:
    """A roadmap whose workflow ran to the content phase here: generating, its thread checkpointed."""
    roadmap_id = await create(client, owner)
    runtime.current().name_service("celery_workflow")
    assert await roadmap_graph.run(roadmap_id, "Retention", 2) == "awaiting_content"
    return roadmap_id


async def finish(roadmap_id: str) -> str:
    """The content phase and the resume, as the content and workflow workers would run them."""
    await generate_content(roadmap_id)
    return await roadmap_graph.resume_after_content(roadmap_id)


async def test_a_finished_roadmaps_thread_goes_after_the_window_a_running_ones_stays(
    client: httpx.AsyncClient, test_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECKPOINT_RETENTION_SECONDS", "3600")
    get_settings.cache_clear()
    done, running = await planned(client), await planned(client)
    assert await finish(done) == "completed"
    saver = await get_checkpointer()
    before = await thread_rows(test_db, done)
    assert before["checkpoints"] >= 4 and before["checkpoint_writes"] >= 4, before  # the window keeps it

    sweep = await retention.sweep_checkpoints(saver)  # inside the window: nothing of ours goes
    assert await thread_rows(test_db, done) == before
    assert (await thread_rows(test_db, running))["checkpoints"] >= 3

    released = RETENTION_ROWS_DELETED.labels("checkpoints", "retention")._value.get()
    sweep = await retention.sweep_checkpoints(saver, seconds=0)  # a pass at 0 s
    assert await thread_rows(test_db, done) == dict.fromkeys(TABLES, 0)
    assert sweep.threads_released >= 1 and sweep.rows["checkpoints"] >= before["checkpoints"]
    assert RETENTION_ROWS_DELETED.labels("checkpoints", "retention")._value.get() - released >= 4
    # In progress: it could still be resumed, so it keeps its thread whatever the window.
    assert (await thread_rows(test_db, running))["checkpoints"] >= 3
    await test_db.execute("UPDATE roadmaps SET status = 'failed' WHERE id = $1", uuid.UUID(running))


async def test_threads_of_roadmaps_that_no_longer_exist_are_swept_and_foreign_ones_left(
    test_db: asyncpg.Connection,
) -> None:
    runtime.current().name_service("celery_workflow")
    saver = await get_checkpointer()
    orphan, foreign = str(uuid.uuid4()), "not-a-roadmap"
    for thread_id in (orphan, foreign):
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        stored = await saver.aput(config, empty_checkpoint(), {}, {})
        await saver.aput_writes(stored, [("topic", "x")], task_id="t")
    assert (await thread_rows(test_db, orphan))["checkpoint_writes"] == 1

    await retention.sweep_checkpoints(saver, seconds=3600)  # no roadmap at all: no window applies
    assert await thread_rows(test_db, orphan) == dict.fromkeys(TABLES, 0)
    assert (await thread_rows(test_db, foreign))["checkpoints"] == 1  # not a roadmap's: not ours
    await saver.adelete_thread(foreign)


async def test_the_watchdog_still_resumes_from_the_checkpoint_at_zero_retention(
    client: httpx.AsyncClient, test_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECKPOINT_RETENTION_SECONDS", "0")
    monkeypatch.setenv("ROADMAP_STALL_SECONDS", "60")
    get_settings.cache_clear()
    roadmap_id = await planned(client)
    saver = await get_checkpointer()
    await retention.sweep_checkpoints(saver)  # a pass at 0 s while it is generating
    kept = await thread_rows(test_db, roadmap_id)
    assert kept["checkpoints"] >= 3

    # Its content task was lost: nothing moved for two minutes.
    await test_db.execute(
        "UPDATE roadmaps SET updated_at = now() - interval '2 minutes' WHERE id = $1", uuid.UUID(roadmap_id)
    )
    await test_db.execute(
        "UPDATE concepts SET updated_at = now() - interval '2 minutes' WHERE roadmap_id = $1",
        uuid.UUID(roadmap_id),
    )
    verdicts = {v.roadmap_id: v.action for v in await watchdog.watch()}
    assert verdicts.get(roadmap_id) == GENERATE_CONTENT
    # The re-dispatched content task, then the resume: it assembles from the stored checkpoint (a
    # missing one would answer "not_waiting"), and the finished thread goes at once.
    assert await finish(roadmap_id) == "completed"
    assert await thread_rows(test_db, roadmap_id) == dict.fromkeys(TABLES, 0)
    assert await roadmap_graph.resume_after_content(roadmap_id) == "not_waiting"  # a duplicate resume


async def test_task_logs_purge_in_bounded_batches_on_one_connection_and_one_process_at_a_time(
    test_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_BATCH_SIZE", "400")
    monkeypatch.setenv("RETENTION_BATCH_PAUSE_SECONDS", "0.05")
    get_settings.cache_clear()
    marker = f"purge-{uuid.uuid4()}"
    await test_db.execute(
        "INSERT INTO task_logs (task_id, task_name, event, level, payload, created_at)"
        " SELECT $1, 'test', 'old', 'info', '{}', now() - interval '31 days' - i * interval '1 second'"
        " FROM generate_series(1, 1900) AS i",
        marker,
    )
    await test_db.execute(
        "INSERT INTO task_logs (task_id, task_name, event, level, payload, created_at)"
        " SELECT $1, 'test', 'recent', 'info', '{}', now() - interval '29 days' FROM generate_series(1, 50)",
        marker,
    )

    # Another process holds the retention lock: this one leaves the round to it.
    async with test_db.transaction():
        await test_db.execute("SELECT pg_advisory_xact_lock($1)", retention.RETENTION_LOCK_KEY)
        blocked = await retention.purge_task_logs(days=30)
    assert blocked.locked_out and blocked.deleted == 0

    peak, between, done = 0, 0, asyncio.Event()

    async def watch() -> None:
        nonlocal peak, between
        while not done.is_set():
            held = pool_snapshot().checked_out
            peak = max(peak, held)
            between += held == 0
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    before = RETENTION_ROWS_DELETED.labels("task_logs", "retention")._value.get()
    report = await retention.purge_task_logs(days=30)
    done.set()
    await watcher
    assert report.deleted >= 1900 and report.batches >= 5 and not report.locked_out  # 400 at most each
    assert peak == 1, peak  # never more than one connection of the pool
    assert between > 0  # none held during the pauses between batches
    left = await test_db.fetch(
        "SELECT event, count(*) AS n FROM task_logs WHERE task_id = $1 GROUP BY 1", marker
    )
    assert {r["event"]: r["n"] for r in left} == {"recent": 50}
    assert RETENTION_ROWS_DELETED.labels("task_logs", "retention")._value.get() - before >= 1900
    assert (await retention.purge_task_logs(days=0)).batches == 0  # 0 keeps them forever


async def test_the_round_asks_the_workflow_queue_for_a_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    drain("roadmap_workflow")
    await retention.retention_round()
    assert {"task": RELEASE_CHECKPOINTS, "args": "()"} in queued("roadmap_workflow")


async def test_delete_a_roadmap_the_owner_or_an_admin_idempotently(
    client: httpx.AsyncClient, test_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECKPOINT_RETENTION_SECONDS", "3600")
    get_settings.cache_clear()
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    pending = await create(client, owner)
    refused = await client.delete(f"/api/v1/roadmaps/{pending}", headers=auth("user", owner))
    assert refused.status_code == 409 and refused.json()["reason"] == "roadmap_in_progress"
    assert await test_db.fetchval("SELECT count(*) FROM roadmaps WHERE id = $1", uuid.UUID(pending)) == 1

    roadmap_id = await planned(client, owner)
    assert await finish(roadmap_id) == "completed"
    assert (await thread_rows(test_db, roadmap_id))["checkpoints"] >= 4  # within its window
    assert (
        await client.delete(f"/api/v1/roadmaps/{roadmap_id}", headers=auth("user", "someone-else"))
    ).status_code == 404

    drain("roadmap_workflow")
    response = await client.delete(f"/api/v1/roadmaps/{roadmap_id}", headers=auth("user", owner))
    assert response.status_code == 204 and response.content == b""
    rid = uuid.UUID(roadmap_id)
    assert await test_db.fetchval("SELECT count(*) FROM roadmaps WHERE id = $1", rid) == 0
    assert await test_db.fetchval("SELECT count(*) FROM concepts WHERE roadmap_id = $1", rid) == 0
    assert await test_db.fetchval("SELECT count(*) FROM task_logs WHERE task_id = $1", roadmap_id) == 0
    # Its thread is released by the workflow worker, asked through the outbox (published at once).
    assert {"task": RELEASE_CHECKPOINTS, "args": repr([[roadmap_id]])} in queued("roadmap_workflow")
    assert (
        await test_db.fetchval("SELECT count(*) FROM outbox WHERE args::text LIKE $1", f"%{roadmap_id}%") == 0
    )
    sweep = await retention.release_threads(await get_checkpointer(), [roadmap_id], reason="deleted")
    assert sweep.threads_released == 1 and await thread_rows(test_db, roadmap_id) == dict.fromkeys(TABLES, 0)

    assert (
        await client.get(f"/api/v1/roadmaps/{roadmap_id}", headers=auth("user", owner))
    ).status_code == 404
    assert (
        await client.delete(f"/api/v1/roadmaps/{roadmap_id}", headers=auth("user", owner))
    ).status_code == 404
    assert (await client.delete(f"/api/v1/roadmaps/{uuid.uuid4()}", headers=auth("admin"))).status_code == 404
    await test_db.execute("UPDATE roadmaps SET status = 'failed' WHERE id = $1", uuid.UUID(pending))
    assert (await client.delete(f"/api/v1/roadmaps/{pending}", headers=auth("admin"))).status_code == 204


async def test_an_admin_erases_every_roadmap_of_an_owner(
    client: httpx.AsyncClient, test_db: asyncpg.Connection
) -> None:
    owner, other = f"erase-{uuid.uuid4().hex[:8]}", f"keep-{uuid.uuid4().hex[:8]}"
    mine = [await create(client, owner) for _ in range(3)]
    theirs = await create(client, other)
    path = f"/api/v1/admin/owners/{owner}/roadmaps"
    assert (await client.delete(path, headers=auth("user", owner))).status_code == 403
    busy = await client.delete(path, headers=auth("admin"))
    assert busy.status_code == 409 and busy.json()["reason"] == "roadmap_in_progress"
    assert await test_db.fetchval("SELECT count(*) FROM roadmaps WHERE owner = $1", owner) == 3

    await test_db.execute("UPDATE roadmaps SET status = 'completed' WHERE owner = ANY($1)", [owner, other])
    erased = await client.delete(path, headers=auth("admin"))
    assert erased.status_code == 200 and erased.json() == {"owner": owner, "deleted": 3}
    assert await test_db.fetchval("SELECT count(*) FROM roadmaps WHERE owner = $1", owner) == 0
    ids = [str(i) for i in mine]
    assert await test_db.fetchval("SELECT count(*) FROM task_logs WHERE task_id = ANY($1)", ids) == 0
    assert await test_db.fetchval("SELECT count(*) FROM roadmaps WHERE id = $1", uuid.UUID(theirs)) == 1
    again = await client.delete(path, headers=auth("admin"))
    assert again.status_code == 200 and again.json()["deleted"] == 0


async def test_the_admin_view_and_metrics_show_what_the_tables_hold(
    client: httpx.AsyncClient, test_db: asyncpg.Connection
) -> None:
    await test_db.execute(
        "INSERT INTO outbox (task_name, args, created_at, available_at)"
        " VALUES ('test.nothing', $1, now() - interval '2 hours', now() + interval '1 hour')",
        json.dumps(["x"]),
    )
    try:
        view = await client.get("/api/v1/admin/connections", headers=auth("admin"))
        assert view.status_code == 200, view.text
        storage = view.json()["storage"]
        assert set(storage) == set(retention.GROWING_TABLES)
        assert all(storage[t]["bytes"] > 0 for t in retention.GROWING_TABLES), storage
        assert storage["outbox"]["oldest_row_age_seconds"] >= 7200
        metrics = (await client.get("/metrics")).text
        assert 'data_oldest_row_age_seconds{environment="test",table="outbox"}' in metrics
        assert 'data_table_bytes{environment="test",table="checkpoint_blobs"}' in metrics
    finally:
        await test_db.execute("DELETE FROM outbox WHERE task_name = 'test.nothing'")
