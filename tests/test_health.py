"""/health: the guide's shape, consistent figures, 503 within 2 s when the database is unreachable."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack

import httpx
import pytest

from app import sizing
from app.config.settings import get_settings
from app.db.engine import get_engine

pytestmark = pytest.mark.usefixtures("migrated_database")

POOL_KEYS = {"pool_size", "checked_out", "overflow", "max_overflow", "max_connections", "usage_ratio"}


def assert_consistent(pool: dict[str, float]) -> None:
    assert set(pool) == POOL_KEYS
    assert 0 <= pool["checked_out"] <= pool["max_connections"]
    assert pool["max_connections"] == pool["pool_size"] + pool["max_overflow"]
    assert 0 <= pool["overflow"] <= pool["max_overflow"]
    assert pool["usage_ratio"] == round(100 * pool["checked_out"] / pool["max_connections"], 1)


async def test_healthy_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "database", "redis", "langgraph", "task_events"}
    assert body["task_events"]["recording"] is True
    assert body["langgraph"]["pool"]["opened"] is False  # API processes run no graphs
    assert body["status"] == "healthy"
    assert body["database"]["status"] == "healthy"
    assert body["redis"] == {"status": "healthy"}
    pool = body["database"]["pool"]
    assert_consistent(pool)
    settings = get_settings()
    assert pool["pool_size"] == sizing.pool_sizing(settings).pool_size
    assert pool["max_overflow"] == sizing.pool_sizing(settings).max_overflow
    assert pool["checked_out"] == 0  # the probe's own connection is back in the pool


async def test_figures_track_connections_in_use(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 2 + 1 pool (the API's is fixed-size by default), to see the overflow reported.
    monkeypatch.setenv("API_DB_POOL_SIZE", "2")
    monkeypatch.setenv("API_DB_MAX_OVERFLOW", "1")
    get_settings.cache_clear()
    async with AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(get_engine().connect())
        # 2 held + max 1 free for the probe itself (pool 2 + overflow 1)
        body = (await client.get("/health")).json()
    pool = body["database"]["pool"]
    assert_consistent(pool)
    assert pool["checked_out"] == 2
    assert pool["usage_ratio"] == round(100 * 2 / 3, 1)
    assert pool["overflow"] == 1  # the probe needed the overflow slot and it stays open until checkin


async def test_exhausted_pool_makes_health_503_quickly(client: httpx.AsyncClient) -> None:
    async with AsyncExitStack() as stack:
        for _ in range(sizing.pool_sizing(get_settings()).max_connections):
            await stack.enter_async_context(get_engine().connect())
        started = time.perf_counter()
        response = await client.get("/health")
        elapsed = time.perf_counter() - started
    assert response.status_code == 503
    assert elapsed < 2.0
    body = response.json()
    assert body["database"]["status"] == "unhealthy"
    assert_consistent(body["database"]["pool"])
    assert body["database"]["pool"]["usage_ratio"] == 100.0


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback port that accepts TCP connections and never says a word: a hung server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.mark.parametrize("kind", ["refused", "silent"])
async def test_unreachable_database_is_503_within_2s(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, silent_server: str, kind: str
) -> None:
    # Refused fails at once; a silent server is the slow failure only a timeout ends.
    host = "127.0.0.1:9" if kind == "refused" else silent_server
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:pw-not-shown@{host}/x")
    get_settings.cache_clear()
    started = time.perf_counter()
    response = await client.get("/health")
    elapsed = time.perf_counter() - started
    assert response.status_code == 503
    assert elapsed < 2.0
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["database"]["status"] == "unhealthy"
    assert_consistent(body["database"]["pool"])
    assert "pw-not-shown" not in response.text and host not in response.text


async def test_redis_down_degrades_but_stays_200(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    get_settings.cache_clear()
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"]["status"] == "healthy"
    assert body["redis"]["status"] == "unhealthy"


async def test_task_events_dropped_while_redis_is_down_are_counted_and_shown(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """emit() never fails its caller, so a Redis outage loses events: counted in Prometheus and /health,
    not only logged. The emit itself stays fast (the connection is refused at once)."""
    from prometheus_client import REGISTRY

    from app import runtime
    from app.messaging import task_events

    def counted() -> float:
        value = REGISTRY.get_sample_value("task_events_dropped_total", {"reason": "redis_unavailable"})
        return value or 0.0

    before_metric, before_health = counted(), task_events.dropped_counts().get("redis_unavailable", 0)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port}/0")
    get_settings.cache_clear()
    await runtime.current().aclose()  # clients built from here on use the new URL

    started = time.perf_counter()
    for n in range(3):
        task_events.emit("lost_line", task_name="test.redis_down", n=n)  # does not raise
    assert time.perf_counter() - started < 2 * get_settings().REDIS_TIMEOUT
    assert counted() == before_metric + 3

    body = (await client.get("/health")).json()
    assert body["task_events"]["recording"] is False
    assert body["task_events"]["dropped_by_reason"]["redis_unavailable"] == before_health + 3
    assert body["task_events"]["dropped"] >= before_health + 3
    metrics_text = (await client.get("/metrics")).text
    assert 'task_events_dropped_total{reason="redis_unavailable"}' in metrics_text
