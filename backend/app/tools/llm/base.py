"""What the roadmap workflow asks of a language model: two questions, typed answers."""

from __future__ import annotations

from typing import Protocol

from app.tools.search.base import SearchResult


class LLMError(RuntimeError):
    """The provider failed or answered something unusable; the caller may retry."""


class RoadmapLLM(Protocol):
    name: str

    async def plan_concepts(self, topic: str, count: int) -> list[str]:
        """Titles of ``count`` concepts to learn, in order, for ``topic``."""
        ...

    async def write_concept(self, topic: str, concept: str, sources: list[SearchResult]) -> str:
        """The learning content for one concept (markdown)."""
        ...
