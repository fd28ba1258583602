"""The offline search provider: deterministic results on an ``offline.invalid`` host, made here.

Selected by ``SEARCH_PROVIDER=offline``. It needs no key: a development stack has sources before any
Tavily key row exists. With ``SEARCH_OFFLINE_USES_KEYS`` (the load harness, the router's tests) it
still goes through the router's key choice, availability cache and credit accounting, exactly as in
production, and ignores the key it is given.
"""

from __future__ import annotations

import asyncio
import hashlib
from urllib.parse import quote

from app.tools.search.base import SearchResult


class OfflineSearch:
    name = "offline"

    def __init__(self, latency: float = 0.0, *, needs_key: bool = True) -> None:
        self.latency = latency
        self.needs_key = needs_key

    async def search(self, query: str, api_key: str, *, max_results: int = 5) -> list[SearchResult]:
        if self.latency:
            await asyncio.sleep(self.latency)
        digest = hashlib.sha256(query.encode()).hexdigest()
        return [
            SearchResult(
                title=f"Offline result {i + 1} for {query}",
                url=f"https://offline.invalid/{quote(query)}/{digest[i * 4 : i * 4 + 8]}",
                snippet="Deterministic offline search result (SEARCH_PROVIDER=offline).",
            )
            for i in range(min(3, max_results))
        ]
