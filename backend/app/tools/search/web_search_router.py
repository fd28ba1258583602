"""Chooses a Tavily key for each search, behind a Redis cache of whether any key has credits left.

Per search:

1. ``tavily:keys:available`` in Redis (the guide's key: 0/1, for TAVILY_AVAILABILITY_CACHE_TTL seconds).
   On a miss, ``TavilyKeyRepository.get_best_key()`` decides and the answer is cached. When no key has
   credits, every search within the TTL is answered from Redis without touching the database.
2. One atomic statement picks the best key and spends a credit (``reserve_credit``), in its own short
   session: no connection is held during the HTTP call to the search provider.

If Redis is down the availability check goes to the database and says so in the log; the search never
fails because of the cache. A database failure logs ``tavily_get_best_key_failed`` and the search
answers with no results, so content generation continues without sources.

Where each check was answered is counted by ``tavily_availability_lookups_total`` (``source``: cache or
database); ``availability_lookups()`` reads this process's figures.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.config.settings import Settings, get_settings
from app.core import metrics
from app.core.redis_client import get_redis
from app.db.batch import Coalescer
from app.db.session import autocommit, safe_session
from app.repositories.tavily_keys import TavilyKeyRepository
from app.tools.search.base import SearchError, SearchProvider, SearchResult
from app.tools.search.offline import OfflineSearch
from app.tools.search.tavily import TavilySearch

log = structlog.get_logger("app.search")

AVAILABILITY_KEY = "tavily:keys:available"


def get_search_provider(settings: Settings | None = None) -> SearchProvider:
    settings = settings or get_settings()
    if settings.SEARCH_PROVIDER == "offline":
        return OfflineSearch(
            latency=settings.SEARCH_OFFLINE_LATENCY, needs_key=settings.SEARCH_OFFLINE_USES_KEYS
        )
    return TavilySearch(base_url=settings.TAVILY_BASE_URL, timeout=settings.SEARCH_TIMEOUT)


@dataclass
class SearchOutcome:
    results: list[SearchResult]
    reason: str  # ok | no_search_keys | key_lookup_failed | search_failed
    key_id: int | None = None


def availability_lookups() -> dict[str, int]:
    """This process's availability checks so far, by where they were answered (``cache``,
    ``database``): ``tavily_availability_lookups_total``'s values. Differences of two readings show
    what the cache saves (the guide expects 95% fewer database queries)."""
    return {
        source: int(REGISTRY.get_sample_value("tavily_availability_lookups_total", {"source": source}) or 0)
        for source in ("cache", "database")
    }


class WebSearchRouter:
    def __init__(
        self,
        provider: SearchProvider | None = None,
        *,
        redis: Redis | None = None,
        settings: Settings | None = None,
        use_cache: bool = True,
    ) -> None:
        self.settings = settings or get_settings()
        self.provider = provider or get_search_provider(self.settings)
        self._redis = redis
        self.use_cache = use_cache
        # Single flight: concurrent misses in this process wait for one database lookup, instead of
        # all asking at once the moment the cache entry expires.
        self._refresh = asyncio.Lock()
        # Concurrent searches (a wave of concepts) spend their credits in one statement.
        self._reservations: Coalescer[object, None, tuple[int, str, int] | None] = Coalescer(
            self._reserve_many, linger=0.005
        )
        self._redis_down = False

    @property
    def cache_key(self) -> str:
        return f"{self.settings.REDIS_KEY_PREFIX}{AVAILABILITY_KEY}"

    def _redis_client(self) -> Redis:
        return self._redis or get_redis()

    async def _cache_get(self) -> bytes | None:
        try:
            value = await self._redis_client().get(self.cache_key)
            self._redis_down = False
            return value
        except (RedisError, OSError) as exc:
            self._redis_down = True
            log.warning("tavily_availability_cache_unavailable", fallback="database", error=str(exc))
            return None

    async def _cache_set(self, available: bool) -> None:
        with contextlib.suppress(RedisError, OSError):  # an answer not cached is only a miss later
            await self._redis_client().set(
                self.cache_key, b"1" if available else b"0", ex=self.settings.TAVILY_AVAILABILITY_CACHE_TTL
            )

    async def invalidate(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # the entry expires after its TTL anyway
            await self._redis_client().delete(self.cache_key)

    async def is_available(self) -> bool:
        if not self.use_cache:
            return await self._lookup()
        cached = await self._cached_answer()
        if cached is not None:
            return cached
        if self._redis_down:
            return await self._lookup()  # nothing to wait for: every caller asks the database
        async with self._refresh:
            cached = await self._cached_answer()  # filled while we waited for the lock?
            return cached if cached is not None else await self._lookup()

    async def _cached_answer(self) -> bool | None:
        cached = await self._cache_get()
        if cached is None:
            return None
        metrics.TAVILY_AVAILABILITY_LOOKUPS.labels("cache").inc()
        return cached == b"1"

    async def _lookup(self) -> bool:
        metrics.TAVILY_AVAILABILITY_LOOKUPS.labels("database").inc()
        try:
            async with safe_session() as session:
                best = await TavilyKeyRepository(session).get_best_key()
        except Exception as exc:  # noqa: BLE001 - a search must never fail the content it serves
            log.error("tavily_get_best_key_failed", error=str(exc))
            return False
        if self.use_cache:
            await self._cache_set(best is not None)
        return best is not None

    async def _reserve_many(self, callers: dict[object, None]) -> dict[object, tuple[int, str, int] | None]:
        """Credits for every search that asked within the linger: n from one key in one atomic
        statement when a key has n left, else one by one. Each statement commits by itself, so the
        key's row lock lasts a statement, not a transaction."""
        async with autocommit() as conn:
            repo = TavilyKeyRepository(conn)
            n = len(callers)
            if n > 1 and (batch := await repo.reserve_credit(n=n)) is not None:
                key_id, api_key, left = batch
                return {caller: (key_id, api_key, left + n - 1 - i) for i, caller in enumerate(callers)}
            return {caller: await repo.reserve_credit() for caller in callers}

    async def search(self, query: str, *, max_results: int = 5) -> SearchOutcome:
        if not self.provider.needs_key:
            try:
                return SearchOutcome(await self.provider.search(query, "", max_results=max_results), "ok")
            except SearchError as exc:
                log.warning("web_search_failed", provider=self.provider.name, error=str(exc))
                return SearchOutcome([], "search_failed")
        if not await self.is_available():
            return SearchOutcome([], "no_search_keys")
        try:
            reserved = await self._reservations.submit(object(), None)
        except Exception as exc:  # noqa: BLE001
            log.error("tavily_get_best_key_failed", error=str(exc))
            return SearchOutcome([], "key_lookup_failed")
        if reserved is None:
            if self.use_cache:
                await self._cache_set(False)
            return SearchOutcome([], "no_search_keys")
        key_id, api_key, credits_left = reserved
        if credits_left == 0 and self.use_cache:
            await self.invalidate()  # this key just ran out: let the next search re-check
        try:
            results = await self.provider.search(query, api_key, max_results=max_results)
        except SearchError as exc:
            log.warning("web_search_failed", provider=self.provider.name, key_id=key_id, error=str(exc))
            return SearchOutcome([], "search_failed", key_id)
        return SearchOutcome(results, "ok", key_id)
