"""WebSearchRouter: the availability cache (hit, miss, Redis down), atomic credits, DB failure."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
import structlog
from redis.asyncio import Redis

from app.config.settings import get_settings
from app.core.redis_client import get_redis
from app.repositories.tavily_keys import RESERVE_CREDITS, TavilyKeyRepository
from app.tools.search.offline import OfflineSearch
from app.tools.search.web_search_router import WebSearchRouter, availability_lookups

RESERVE_CREDIT = RESERVE_CREDITS.replace(":n", "1")  # one credit, in asyncpg's own syntax


@pytest.fixture
async def keys(test_db: asyncpg.Connection) -> asyncpg.Connection:
    """An empty key table for the test, and a fresh cache key prefix."""
    await test_db.execute("DELETE FROM tavily_api_keys")
    return test_db


@pytest.fixture(autouse=True)
def own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_KEY_PREFIX", f"router-{uuid.uuid4().hex[:8]}:")
    get_settings.cache_clear()


async def add_key(db: asyncpg.Connection, credits: int, status: str = "active") -> int:
    return await db.fetchval(
        "INSERT INTO tavily_api_keys (api_key, remaining_credits, status) VALUES ($1, $2, $3) RETURNING id",
        f"tvly-{uuid.uuid4().hex}", credits, status,
    )  # fmt: skip


def lookups_since(before: dict[str, int]) -> dict[str, int]:
    """Availability checks answered since ``before`` (an ``availability_lookups()``), by source."""
    now = availability_lookups()
    return {source: now[source] - before[source] for source in now}


async def test_miss_then_hits_within_ttl(keys: asyncpg.Connection) -> None:
    await add_key(keys, 100)
    router = WebSearchRouter(OfflineSearch())
    before = availability_lookups()
    outcomes = [await router.search(f"query {i}") for i in range(20)]
    assert all(o.reason == "ok" and len(o.results) == 3 for o in outcomes)
    assert lookups_since(before) == {"database": 1, "cache": 19}
    assert await get_redis().get(router.cache_key) == b"1"
    assert 0 < await get_redis().ttl(router.cache_key) <= get_settings().TAVILY_AVAILABILITY_CACHE_TTL
    assert await keys.fetchval("SELECT remaining_credits FROM tavily_api_keys") == 80


async def test_no_keys_is_cached_as_zero_and_spares_the_database(
    keys: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_key(keys, 0)  # no credits
    await add_key(keys, 50, status="disabled")
    reservations: list[int] = []
    reserve = TavilyKeyRepository.reserve_credit

    async def counted(self: TavilyKeyRepository, attempts: int = 10, n: int = 1) -> object:
        reservations.append(n)
        return await reserve(self, attempts, n)

    monkeypatch.setattr(TavilyKeyRepository, "reserve_credit", counted)
    router = WebSearchRouter(OfflineSearch())
    before = availability_lookups()
    outcomes = [await router.search("q") for _ in range(50)]
    assert {o.reason for o in outcomes} == {"no_search_keys"}
    assert lookups_since(before)["database"] == 1 and reservations == []
    assert await get_redis().get(router.cache_key) == b"0"


async def test_best_key_is_the_one_with_most_credits(keys: asyncpg.Connection) -> None:
    await add_key(keys, 3)
    richest = await add_key(keys, 9)
    outcome = await WebSearchRouter(OfflineSearch()).search("q")
    assert outcome.key_id == richest


async def test_redis_down_falls_back_to_the_database(
    keys: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_key(keys, 10)
    dead = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    router = WebSearchRouter(OfflineSearch(), redis=dead)
    before = availability_lookups()
    with structlog.testing.capture_logs() as logs:
        outcomes = [await router.search("q") for _ in range(3)]
    assert all(o.reason == "ok" for o in outcomes)  # never fails the request
    fallback = [e for e in logs if e["event"] == "tavily_availability_cache_unavailable"]
    assert lookups_since(before)["database"] == 3 and len(fallback) >= 3
    assert fallback and fallback[0]["fallback"] == "database" and fallback[0]["log_level"] == "warning"
    await dead.aclose()


async def test_database_failure_logs_and_returns_no_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/nowhere")
    get_settings.cache_clear()
    router = WebSearchRouter(OfflineSearch())
    with structlog.testing.capture_logs() as logs:
        outcome = await router.search("q")
    assert outcome.results == [] and outcome.reason == "no_search_keys"
    failures = [e for e in logs if e["event"] == "tavily_get_best_key_failed"]
    assert failures and failures[0]["log_level"] == "error" and failures[0]["error"]


async def test_concurrent_spending_never_goes_below_zero(keys: asyncpg.Connection, database_url: str) -> None:
    """40 connections race for 2 keys holding 25 credits in all: exactly 25 succeed."""
    await add_key(keys, 10)
    await add_key(keys, 15)
    conns = [await asyncpg.connect(database_url) for _ in range(40)]
    try:
        start = asyncio.Event()

        async def spend(conn: asyncpg.Connection) -> int:
            await start.wait()
            won = 0
            for _ in range(6):  # 240 tries for 25 credits; a lost race is simply tried again
                if await conn.fetchrow(RESERVE_CREDIT):
                    won += 1
            return won

        tasks = [asyncio.create_task(spend(c)) for c in conns]
        await asyncio.sleep(0.05)
        start.set()
        spent = sum(await asyncio.gather(*tasks))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert spent == 25
    rows = await keys.fetch("SELECT remaining_credits, status FROM tavily_api_keys")
    assert [(r["remaining_credits"], r["status"]) for r in rows] == [(0, "exhausted"), (0, "exhausted")]


async def test_router_spends_credits_concurrently_without_overdraft(keys: asyncpg.Connection) -> None:
    await add_key(keys, 7)
    router = WebSearchRouter(OfflineSearch())
    outcomes = await asyncio.gather(*(router.search(f"q{i}") for i in range(20)))
    assert sum(o.reason == "ok" for o in outcomes) == 7
    assert await keys.fetchval("SELECT remaining_credits FROM tavily_api_keys") == 0


async def test_concurrent_misses_share_one_database_lookup(keys: asyncpg.Connection) -> None:
    await add_key(keys, 0)
    router = WebSearchRouter(OfflineSearch())
    before = availability_lookups()
    outcomes = await asyncio.gather(*(router.search(f"q{i}") for i in range(25)))
    assert {o.reason for o in outcomes} == {"no_search_keys"}
    assert lookups_since(before)["database"] == 1  # single flight, not 25 queries at expiry


async def test_offline_search_needs_no_key_row(
    keys: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A development stack (SEARCH_PROVIDER=offline) has sources before any Tavily key exists, and the
    search neither asks the database nor spends a credit."""
    monkeypatch.setenv("SEARCH_PROVIDER", "offline")
    get_settings.cache_clear()
    router = WebSearchRouter()
    before = availability_lookups()
    outcome = await router.search("PostgreSQL pooling")
    assert outcome.reason == "ok" and len(outcome.results) == 3 and outcome.key_id is None
    assert all(r.url.startswith("https://offline.invalid/") for r in outcome.results)
    assert lookups_since(before) == {"database": 0, "cache": 0}
    # SEARCH_OFFLINE_USES_KEYS: the router's real work again (key choice, cache, credits)
    monkeypatch.setenv("SEARCH_OFFLINE_USES_KEYS", "true")
    get_settings.cache_clear()
    assert (await WebSearchRouter().search("q")).reason == "no_search_keys"
