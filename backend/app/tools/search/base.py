"""The search interface: a query and a key in, a few results out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str


class SearchError(RuntimeError):
    """The provider failed; the caller decides whether content can go on without sources."""


class SearchProvider(Protocol):
    name: str
    # False: the router calls it without choosing or spending a key (the offline provider).
    needs_key: bool

    async def search(self, query: str, api_key: str, *, max_results: int = 5) -> list[SearchResult]: ...
