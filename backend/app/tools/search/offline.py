"""The offline search provider: deterministic results on an ``offline.invalid`` host, made here.

Selected by ``SEARCH_PROVIDER=offline``. It still receives the key the router chose (so key choice,
the availability cache and credit accounting are exercised exactly as in production), and ignores it.
"""

from __future__ import annotations

import asyncio
import hashlib
from urllib.parse import quote

from app.tools.search.base import SearchResult


class OfflineSearch:
    name = "offline"

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency

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
