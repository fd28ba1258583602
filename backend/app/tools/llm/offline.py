"""The offline LLM: deterministic, clearly labelled text, produced on this machine.

Selected by ``LLM_PROVIDER=offline``, or by ``auto`` when no ``LLM_API_KEY`` is set. Its output says
that it is offline; nothing pretends to be a model. ``LLM_OFFLINE_LATENCY`` simulates the time a real
call takes (docs/benchmarks.md's load runs use 1 s), so pool behaviour under load is realistic.
"""

from __future__ import annotations

import asyncio
import hashlib

from app.tools.search.base import SearchResult

_ASPECTS = (
    "Foundations", "Core vocabulary", "Data model", "Tooling", "First project", "Testing",
    "Error handling", "Performance", "Concurrency", "Security", "Deployment", "Observability",
    "Design patterns", "Integration", "Scaling", "Maintenance", "Debugging", "Best practices",
    "Ecosystem", "Advanced internals",
)  # fmt: skip


class OfflineLLM:
    name = "offline"

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency

    async def plan_concepts(self, topic: str, count: int) -> list[str]:
        if self.latency:
            await asyncio.sleep(self.latency)
        digest = int(hashlib.sha256(topic.encode()).hexdigest(), 16)
        start = digest % len(_ASPECTS)
        titles = []
        for i in range(count):
            aspect = _ASPECTS[(start + i) % len(_ASPECTS)]
            level = i // len(_ASPECTS) + 1
            titles.append(f"{topic}: {aspect}" + (f" (part {level})" if level > 1 else ""))
        return titles

    async def write_concept(self, topic: str, concept: str, sources: list[SearchResult]) -> str:
        if self.latency:
            await asyncio.sleep(self.latency)
        refs = "\n".join(f"- [{s.title}]({s.url})" for s in sources) or "- (no sources)"
        digest = hashlib.sha256(f"{topic}|{concept}".encode()).hexdigest()[:12]
        return (
            f"# {concept}\n\n"
            f"_Generated offline (deterministic placeholder, id {digest}); "
            "set LLM_API_KEY for real content._\n\n"
            f"Part of the roadmap **{topic}**.\n\n## Sources\n{refs}\n"
        )
