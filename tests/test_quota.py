"""Per-user creation quota: a rate shared through Redis by every process, and a cap on roadmaps in
progress, counted in PostgreSQL, that concurrent requests cannot slip past and that still holds when
Redis is down (creation itself does not need Redis: its task waits in the outbox)."""

from __future__ import annotations

import asyncio
import os
import uuid

import httpx
import pytest

from app.config.settings import get_settings
from devkit.api import running_api
from devkit.ports import free_port
from tests.support.auth import auth
from tests.support.env import BASE_ENV


def quota(monkeypatch: pytest.MonkeyPatch, rate: str = "100000/minute", in_progress: int = 10000) -> None:
    monkeypatch.setenv("ROADMAP_CREATE_RATE_LIMIT", rate)
    monkeypatch.setenv("ROADMAP_MAX_IN_PROGRESS", str(in_progress))
    get_settings.cache_clear()


def someone() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


async def create(client: httpx.AsyncClient, subject: str, topic: str = "Rate limits") -> httpx.Response:
    return await client.post("/api/v1/roadmaps", json={"topic": topic}, headers=auth(subject=subject))


@pytest.mark.slow
async def test_the_rate_is_per_user_and_shared_by_every_process(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    quota(monkeypatch, rate="3/minute")
    alice = someone()
    assert [(await create(client, alice)).status_code for _ in range(2)] == [202, 202]
    # Another process (a real uvicorn, as another worker or replica would be) sees the same count.
    env = {**os.environ, **BASE_ENV, "ROADMAP_CREATE_RATE_LIMIT": "3/minute"}
    with running_api(env, free_port()) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as other:
            body, headers = {"topic": "Go"}, auth(subject=alice)
            assert (await other.post("/api/v1/roadmaps", json=body, headers=headers)).status_code == 202
            refused = await other.post("/api/v1/roadmaps", json=body, headers=headers)
    assert refused.status_code == 429, refused.text
    assert refused.json()["reason"] == "rate_limited"
    assert "ROADMAP_CREATE_RATE_LIMIT" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    again = await create(client, alice)
    assert again.status_code == 429 and again.json()["reason"] == "rate_limited"
    # Someone else is not held back by Alice.
    assert (await create(client, someone())).status_code == 202


async def test_roadmaps_in_progress_are_capped_per_user(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, test_db: object
) -> None:
    quota(monkeypatch, in_progress=2)
    bob = someone()
    first, second = await create(client, bob), await create(client, bob)
    assert first.status_code == second.status_code == 202
    refused = await create(client, bob, "one too many")
    assert refused.status_code == 429
    assert refused.json()["reason"] == "too_many_in_progress"
    assert "ROADMAP_MAX_IN_PROGRESS=2" in refused.json()["detail"]
    stored = await test_db.fetchval("SELECT count(*) FROM roadmaps WHERE owner = $1", bob)  # type: ignore[attr-defined]
    assert stored == 2
    assert (await create(client, someone())).status_code == 202  # the cap is per user
    # When one finishes (or fails), there is room again.
    await test_db.execute(  # type: ignore[attr-defined]
        "UPDATE roadmaps SET status = 'completed' WHERE id = $1", uuid.UUID(first.json()["id"])
    )
    assert (await create(client, bob)).status_code == 202


async def test_concurrent_creations_cannot_slip_past_the_cap(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, test_db: object
) -> None:
    """Count-then-insert races: without the per-user lock the requests holding the pool's connections
    (3 in tests) all count the same total and all insert."""
    quota(monkeypatch, in_progress=2)
    carol = someone()
    responses = await asyncio.gather(*(create(client, carol, f"burst {i}") for i in range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * 2 + [429] * 6, [r.text for r in responses]
    stored = await test_db.fetchval("SELECT count(*) FROM roadmaps WHERE owner = $1", carol)  # type: ignore[attr-defined]
    assert stored == 2


async def test_with_redis_down_the_rate_is_unchecked_but_the_cap_holds(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, test_db: object
) -> None:
    """Failing closed would make a Redis outage a creation outage; the cap still bounds each user."""
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("OUTBOX_PUBLISH_TIMEOUT", "0.5")
    quota(monkeypatch, rate="1/minute", in_progress=2)
    dave = someone()
    statuses = [(await create(client, dave, f"while redis is down {i}")).status_code for i in range(3)]
    # The rate (1/minute) is not counted without Redis; the cap (2) is, in PostgreSQL.
    assert statuses == [202, 202, 429]
    stored = await test_db.fetchval("SELECT count(*) FROM roadmaps WHERE owner = $1", dave)  # type: ignore[attr-defined]
    assert stored == 2


async def test_a_refused_creation_leaves_nothing_behind(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, test_db: object
) -> None:
    """Over the cap the whole transaction rolls back: no roadmap, no outbox message, no task event."""
    quota(monkeypatch, in_progress=1)
    erin = someone()
    assert (await create(client, erin, "first")).status_code == 202
    topic = f"refused {uuid.uuid4().hex[:6]}"
    written = (
        "SELECT (SELECT count(*) FROM outbox),"
        " (SELECT count(*) FROM task_logs WHERE event = 'roadmap_requested')"
    )
    before = tuple(await test_db.fetchrow(written))  # type: ignore[attr-defined]
    refused = await create(client, erin, topic)
    assert refused.status_code == 429 and refused.json()["reason"] == "too_many_in_progress"
    assert await test_db.fetchval("SELECT count(*) FROM roadmaps WHERE topic = $1", topic) == 0  # type: ignore[attr-defined]
    assert tuple(await test_db.fetchrow(written)) == before  # type: ignore[attr-defined]


def test_an_invalid_rate_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config.loading import InvalidSettingsError
    from app.config.settings import Settings

    monkeypatch.setenv("ROADMAP_CREATE_RATE_LIMIT", "lots")
    with pytest.raises(InvalidSettingsError) as caught:
        Settings.load()
    assert "ROADMAP_CREATE_RATE_LIMIT='lots'" in str(caught.value) and "\n" not in str(caught.value)
