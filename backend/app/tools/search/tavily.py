"""Tavily's search API over HTTP."""

from __future__ import annotations

import httpx

from app.tools.search.base import SearchError, SearchResult


class TavilySearch:
    name = "tavily"
    needs_key = True

    def __init__(self, *, base_url: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    async def search(self, query: str, api_key: str, *, max_results: int = 5) -> list[SearchResult]:
        body = {"query": query, "max_results": max_results, "search_depth": "basic"}
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                response = await http.post(
                    f"{self.base_url}/search", json=body, headers={"Authorization": f"Bearer {api_key}"}
                )
        except httpx.HTTPError as exc:
            raise SearchError(f"Tavily request failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise SearchError(f"Tavily answered HTTP {response.status_code}")
        return [
            SearchResult(title=r.get("title", ""), url=r.get("url", ""), snippet=r.get("content", "")[:500])
            for r in response.json().get("results", [])
        ]
