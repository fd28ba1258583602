"""End to end on real workers: API -> workflow (LangGraph, checkpointed) -> content -> assemble.

The workflow worker plans slowly (offline LLM, 2 s), so a test can kill it in the middle of a step.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from devkit.ports import free_port
from tests.support.auth import auth
from tests.support.metrics_text import sample
from tests.support.workers import Worker, running_workers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("migrated_database")]
PLAN_LATENCY = "2.0"
WRITE_LATENCY = "0.3"


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def workers(migrated_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    prom = tmp_path_factory.mktemp("prom-workflow")
    per_queue = {
        "roadmap_workflow": {
            "LLM_OFFLINE_LATENCY": PLAN_LATENCY,
            "WORKER_METRICS_PORT": str(METRICS_PORT),
            "PROMETHEUS_MULTIPROC_DIR": str(prom),
        },
        "content_generation": {"LLM_OFFLINE_LATENCY": WRITE_LATENCY},
    }
    with running_workers(tmp_path_factory.mktemp("e2e"), 2, per_queue) as started:
        yield started


async def wait_status(client: httpx.AsyncClient, roadmap_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = (await client.get(f"/api/v1/roadmaps/{roadmap_id}", headers=auth())).json()
        if body["status"] in ("completed", "failed"):
            return body
        await asyncio.sleep(0.25)
    raise AssertionError(f"roadmap {roadmap_id} still {body['status']} after {timeout} s")


async def events(db: asyncpg.Connection, roadmap_id: str, event: str) -> list[dict]:
    """Payloads of one roadmap's task events, oldest first."""
    rows = await db.fetch(
        "SELECT payload FROM task_logs WHERE task_id = $1 AND event = $2 ORDER BY created_at, id",
        roadmap_id,
        event,
    )
    return [json.loads(r["payload"]) for r in rows]


async def settled_events(db: asyncpg.Connection, roadmap_id: str, event: str, want: int) -> list:
    """Task events arrive through the logs queue a moment later; wait for ``want`` of them."""
    deadline = time.monotonic() + 15
    rows = await events(db, roadmap_id, event)
    while len(rows) < want and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        rows = await events(db, roadmap_id, event)
    await asyncio.sleep(0.5)  # and nothing more comes after
    return await events(db, roadmap_id, event)


async def test_create_to_completed(
    workers: dict[str, Worker], client: httpx.AsyncClient, test_db: asyncpg.Connection
) -> None:
    created = await client.post("/api/v1/roadmaps", json={"topic": "Distributed systems"}, headers=auth())
    assert created.status_code == 202
    roadmap_id = created.json()["id"]
    body = await wait_status(client, roadmap_id)
    assert body["status"] == "completed", body.get("error")
    assert body["concept_status"] == {"completed": 30}
    assert [c["position"] for c in body["concepts"]] == list(range(30))
    written = await settled_events(test_db, roadmap_id, "concept_written", 30)
    assert sorted(r["concept_id"] for r in written) == sorted(c["id"] for c in body["concepts"])
    report = (await settled_events(test_db, roadmap_id, "content_generated", 1))[0]
    assert report["max_in_flight"] == 15  # CONCEPT_CONCURRENCY_LIMIT, reached and not exceeded
    assert report["seconds"] < 30 * float(WRITE_LATENCY) / 3

    # The workflow worker's checkpointer pool, as Prometheus scrapes it from the worker's parent.
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{METRICS_PORT}/metrics")).text
    assert sample(text, "langgraph_pool_max_size", service="celery_workflow") in (3.0, 6.0)  # 1-2 children
    assert 1 <= sample(text, "langgraph_pool_size", service="celery_workflow") <= 6
    assert sample(text, "db_pool_connections_open", service="celery_workflow") >= 1


async def test_killed_workflow_resumes_from_its_checkpoint(
    workers: dict[str, Worker], client: httpx.AsyncClient, test_db: asyncpg.Connection
) -> None:
    created = await client.post(
        "/api/v1/roadmaps", json={"topic": "Checkpointing", "concept_count": 8}, headers=auth()
    )
    roadmap_id = created.json()["id"]
    planning = await settled_events(test_db, roadmap_id, "workflow_node", 2)
    nodes = [r["node"] for r in planning]
    assert nodes == ["analyse", "plan_concepts"], nodes
    victim = planning[-1]["pid"]
    assert victim in workers["roadmap_workflow"].children()
    os.kill(victim, signal.SIGKILL)  # mid-plan: the LLM call takes 2 s

    body = await wait_status(client, roadmap_id)
    assert body["status"] == "completed", body.get("error")
    assert body["concept_status"] == {"completed": 8}
    nodes = [r["node"] for r in await settled_events(test_db, roadmap_id, "workflow_node", 5)]
    # analyse ran once: the redelivered task resumed at plan_concepts, from the checkpoint.
    assert nodes == ["analyse", "plan_concepts", "plan_concepts", "dispatch_content", "assemble"], nodes
    written = await settled_events(test_db, roadmap_id, "concept_written", 8)
    ids = [r["concept_id"] for r in written]
    assert len(ids) == len(set(ids)) == 8  # each concept's content written exactly once
    rows = await test_db.fetchval(
        "SELECT count(*) FROM concepts WHERE roadmap_id = $1", uuid.UUID(roadmap_id)
    )
    assert rows == 8  # the repeated plan inserted nothing twice


async def test_content_children_killed_mid_generation_lose_no_event(
    workers: dict[str, Worker], client: httpx.AsyncClient, test_db: asyncpg.Connection
) -> None:
    """SIGKILL the content children again and again: every roadmap completes, and each concept has
    exactly one concept_written row (it commits with the content; the Redis buffer could lose it)."""
    ids = []
    for i in range(3):
        created = await client.post(
            "/api/v1/roadmaps", json={"topic": f"Killed {i}", "concept_count": 30}, headers=auth()
        )
        ids.append(created.json()["id"])
    kills = 0
    deadline = time.monotonic() + 40
    while kills < 4 and time.monotonic() < deadline:
        # Kill only a child that is writing concepts (a concept of ours moved in the last moment).
        busy = await test_db.fetchval(
            "SELECT count(*) FROM concepts WHERE roadmap_id = ANY($1::uuid[]) AND status = 'generating'", ids
        )
        children = workers["content_generation"].children()
        if busy and children:
            os.kill(children[kills % len(children)], signal.SIGKILL)
            kills += 1
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.1)
    assert kills >= 2
    for roadmap_id in ids:
        body = await wait_status(client, roadmap_id, timeout=120)
        assert body["status"] == "completed", body.get("error")
        assert body["concept_status"] == {"completed": 30}
        written = [r["concept_id"] for r in await events(test_db, roadmap_id, "concept_written")]
        assert sorted(written) == sorted(c["id"] for c in body["concepts"])  # each exactly once
