"""The outbox, idempotent creation and the watchdog, on the real database and Redis (in this process).

The outages themselves (Redis stopped or stalled, PostgreSQL cut) are in test_outages.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta

import asyncpg
import httpx
import pytest
import redis

from app.config.settings import get_settings
from app.messaging import outbox, watchdog
from app.messaging.names import GENERATE_CONTENT, RESUME_WORKFLOW, RUN_WORKFLOW
from tests.support.auth import auth
from tests.support.env import BASE_ENV, REDIS_URL

pytestmark = pytest.mark.usefixtures("migrated_database")


def queued(queue: str) -> list[dict[str, object]]:
    """The messages waiting in ``queue`` on the test run's Redis prefix: (task name, args) each."""
    client = redis.Redis.from_url(REDIS_URL)
    raw = client.lrange(f"{BASE_ENV['REDIS_KEY_PREFIX']}{queue}", 0, -1)
    messages = [json.loads(item) for item in raw]
    return [{"task": m["headers"]["task"], "args": m["headers"]["argsrepr"]} for m in messages]


def drain(queue: str) -> None:
    redis.Redis.from_url(REDIS_URL).delete(f"{BASE_ENV['REDIS_KEY_PREFIX']}{queue}")


@pytest.fixture(autouse=True)
def empty_queues() -> Iterator[None]:
    """What these tests publish is only looked at, never run: a worker of a later test must not get it."""
    queues = ("roadmap_workflow", "content_generation")
    for queue in queues:
        drain(queue)
    yield
    for queue in queues:
        drain(queue)


async def test_create_stores_roadmap_and_task_together_then_publishes(
    client: httpx.AsyncClient, test_db: asyncpg.Connection
) -> None:
    drain("roadmap_workflow")
    response = await client.post(
        "/api/v1/roadmaps", json={"topic": "Outbox", "concept_count": 2}, headers=auth()
    )
    assert response.status_code == 202, response.text
    roadmap_id = response.json()["id"]
    # Published after the commit, and its outbox row deleted; the request event is in task_logs.
    assert {"task": RUN_WORKFLOW, "args": repr([roadmap_id])} in queued("roadmap_workflow")
    assert await test_db.fetchval("SELECT count(*) FROM outbox WHERE args ->> 0 = $1", roadmap_id) == 0
    events = await test_db.fetch("SELECT event, payload FROM task_logs WHERE task_id = $1", roadmap_id)
    assert [(e["event"], json.loads(e["payload"])) for e in events] == [
        ("roadmap_requested", {"concept_count": 2})
    ]


async def test_idempotency_key_stores_one_roadmap_however_often_it_is_sent(
    client: httpx.AsyncClient, test_db: asyncpg.Connection
) -> None:
    drain("roadmap_workflow")
    key = uuid.uuid4().hex
    headers = {**auth(subject="idem"), "Idempotency-Key": key}
    body = {"topic": "Idempotent", "concept_count": 3}
    responses = await asyncio.gather(
        *(client.post("/api/v1/roadmaps", json=body, headers=headers) for _ in range(8))
    )
    assert [r.status_code for r in responses] == [202] * 8
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 7
    assert await test_db.fetchval("SELECT count(*) FROM roadmaps WHERE idempotency_key = $1", key) == 1
    roadmap_id = responses[0].json()["id"]
    assert len([m for m in queued("roadmap_workflow") if m["args"] == repr([roadmap_id])]) == 1

    changed = await client.post("/api/v1/roadmaps", json={**body, "topic": "Other"}, headers=headers)
    assert changed.status_code == 409 and "Idempotency-Key" in changed.json()["detail"]
    # The key is the caller's own: another user's identical key creates another roadmap.
    other = await client.post(
        "/api/v1/roadmaps", json=body, headers={**auth(subject="bob"), "Idempotency-Key": key}
    )
    assert other.status_code == 202 and other.json()["id"] != roadmap_id


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "tab\tinside"])
async def test_malformed_idempotency_keys_are_refused(client: httpx.AsyncClient, key: str) -> None:
    response = await client.post(
        "/api/v1/roadmaps",
        json={"topic": "Bad key"},
        headers={**auth(), "Idempotency-Key": key},
    )
    assert response.status_code == 422, response.text


async def test_relay_publishes_what_the_request_could_not(test_db: asyncpg.Connection) -> None:
    drain("content_generation")
    roadmap_id = str(uuid.uuid4())
    await test_db.execute(
        "INSERT INTO outbox (task_name, args, available_at) VALUES ($1, $2, now() - interval '1 s'),"
        " ($1, $3, now() + interval '1 hour')",
        GENERATE_CONTENT, json.dumps([roadmap_id]), json.dumps(["not yet due"]),
    )  # fmt: skip
    assert await outbox.relay() == 1
    assert queued("content_generation") == [{"task": GENERATE_CONTENT, "args": repr([roadmap_id])}]
    left = await test_db.fetch("SELECT args FROM outbox WHERE task_name = $1", GENERATE_CONTENT)
    assert [json.loads(r["args"]) for r in left] == [["not yet due"]]
    assert await outbox.relay() == 0  # nothing else is due
    await test_db.execute("DELETE FROM outbox")


async def test_concurrent_relays_publish_each_message_once(test_db: asyncpg.Connection) -> None:
    drain("content_generation")
    ids = [str(uuid.uuid4()) for _ in range(30)]
    await test_db.executemany(
        "INSERT INTO outbox (task_name, args, available_at) VALUES ($1, $2, now() - interval '1 s')",
        [(GENERATE_CONTENT, json.dumps([i])) for i in ids],
    )
    assert sum(await asyncio.gather(*(outbox.relay(limit=7) for _ in range(6)))) == 30
    assert sorted(m["args"] for m in queued("content_generation")) == sorted(repr([i]) for i in ids)
    assert await test_db.fetchval("SELECT count(*) FROM outbox") == 0


async def new_roadmap(db: asyncpg.Connection, status: str, concepts: list[str], idle_seconds: int) -> str:
    """A roadmap that has not moved for ``idle_seconds``, with concepts in ``concepts``' states."""
    idle = timedelta(seconds=idle_seconds)
    roadmap_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO roadmaps (id, topic, status, requested_concepts, owner, updated_at)"
        " VALUES ($1, 'Stalled', $2, $3, 'tester', now() - $4::interval)",
        roadmap_id, status, len(concepts), idle,
    )  # fmt: skip
    for position, concept_status in enumerate(concepts):
        await db.execute(
            "INSERT INTO concepts (id, roadmap_id, position, title, status, attempts, updated_at)"
            " VALUES ($1, $2, $3, 'c', $4, 1, now() - $5::interval)",
            uuid.uuid4(), roadmap_id, position, concept_status, idle,
        )  # fmt: skip
    return str(roadmap_id)


async def test_watchdog_redispatches_each_stalled_roadmap_by_where_it_stopped(
    test_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROADMAP_STALL_SECONDS", "60")
    get_settings.cache_clear()
    for queue in ("roadmap_workflow", "content_generation"):
        drain(queue)
    pending = await new_roadmap(test_db, "pending", [], 120)
    cut_off = await new_roadmap(test_db, "generating", ["completed", "generating", "pending"], 120)
    finished = await new_roadmap(test_db, "generating", ["completed", "failed"], 120)
    recent = await new_roadmap(test_db, "pending", [], 10)
    moving = await new_roadmap(test_db, "generating", [], 120)
    await test_db.execute(  # the roadmap row is old, but a concept was written a moment ago
        "INSERT INTO concepts (id, roadmap_id, position, title, status, attempts)"
        " VALUES ($1, $2, 0, 'c', 'completed', 1)",
        uuid.uuid4(), uuid.UUID(moving),
    )  # fmt: skip
    done = await new_roadmap(test_db, "completed", ["completed"], 7200)
    waiting = await new_roadmap(test_db, "pending", [], 120)  # its task waits for the broker
    await test_db.execute(
        "INSERT INTO outbox (task_name, args, available_at) VALUES ($1, $2, now() + interval '1 minute')",
        RUN_WORKFLOW, json.dumps([waiting]),
    )  # fmt: skip

    # Earlier tests may leave roadmaps that have stalled by now: judge only this test's own.
    mine = {pending, cut_off, finished, recent, moving, done, waiting}
    verdicts = {v.roadmap_id: v.action for v in await watchdog.watch() if v.roadmap_id in mine}
    assert verdicts == {pending: RUN_WORKFLOW, cut_off: GENERATE_CONTENT, finished: RESUME_WORKFLOW}
    assert recent not in verdicts and moving not in verdicts and done not in verdicts
    assert waiting not in verdicts
    assert {"task": RUN_WORKFLOW, "args": repr([pending])} in queued("roadmap_workflow")
    assert {"task": GENERATE_CONTENT, "args": repr([cut_off])} in queued("content_generation")
    assert {"task": RESUME_WORKFLOW, "args": repr([finished])} in queued("roadmap_workflow")
    # Claimed: counted and touched, so the next look (or a second watchdog) leaves them alone.
    assert [v for v in await watchdog.watch() if v.roadmap_id in mine] == []
    counts = await test_db.fetch(
        "SELECT redispatches FROM roadmaps WHERE id = ANY($1::uuid[])", list(verdicts)
    )
    assert [r["redispatches"] for r in counts] == [1, 1, 1]
    await test_db.execute("DELETE FROM outbox")  # the waiting one's: no later test's worker runs it


async def test_watchdog_fails_a_roadmap_that_never_moves_with_the_reason(
    test_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROADMAP_STALL_SECONDS", "60")
    monkeypatch.setenv("ROADMAP_MAX_REDISPATCHES", "2")
    get_settings.cache_clear()
    roadmap_id = await new_roadmap(test_db, "planning", [], 120)
    actions = []
    for _ in range(3):
        actions += [v.action for v in await watchdog.watch() if v.roadmap_id == roadmap_id]
        await test_db.execute(
            "UPDATE roadmaps SET updated_at = now() - interval '2 minutes' WHERE id = $1",
            uuid.UUID(roadmap_id),
        )
    assert actions == [RUN_WORKFLOW, RUN_WORKFLOW, "failed"]
    row = await test_db.fetchrow("SELECT status, error FROM roadmaps WHERE id = $1", uuid.UUID(roadmap_id))
    assert row["status"] == "failed"
    assert "no progress for 60 s after 2 re-dispatches" in row["error"] and "planning" in row["error"]


def test_every_send_by_name_asks_for_no_stored_result() -> None:
    """send_task does not know a task's options: without ignore_result it would store every result
    (and subscribe the sender to it). Both ways a task is sent by name say so."""
    from celery import signals

    from app.core.redis_client import get_sync_redis
    from app.messaging import task_events
    from app.messaging.names import FLUSH_TASK_EVENTS
    from app.messaging.send import send_by_name

    seen: dict[str, object] = {}

    def record_header(headers: dict[str, object] | None = None, **_: object) -> None:
        if headers:
            seen[str(headers.get("task"))] = headers.get("ignore_result")

    signals.before_task_publish.connect(record_header)
    try:
        send_by_name(GENERATE_CONTENT, [str(uuid.uuid4())])
        get_sync_redis().delete(task_events.flush_guard_key())
        task_events.emit("header_check", task_name="test.headers")  # schedules a flush, by name
    finally:
        signals.before_task_publish.disconnect(record_header)
    assert seen == {GENERATE_CONTENT: True, FLUSH_TASK_EVENTS: True}
    drain("content_generation")
    drain("logs")
