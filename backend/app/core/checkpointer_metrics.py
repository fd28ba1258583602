"""The checkpointer pool's figures: what /health shows and the gauges a workflow worker child publishes."""

from __future__ import annotations

from dataclasses import dataclass

from app.core import metrics


@dataclass(frozen=True)
class CheckpointerStats:
    """``opened`` is false where no graph ever ran (an API process): sizes only, no gauges."""

    opened: bool
    min_size: int
    max_size: int
    pool_size: int = 0
    in_use: int = 0
    available: int = 0
    waiting: int = 0


def stats_from_pool(raw: dict[str, int], min_size: int, max_size: int) -> CheckpointerStats:
    """psycopg_pool's ``get_stats()`` in the guide's terms."""
    size, available = raw.get("pool_size", 0), raw.get("pool_available", 0)
    return CheckpointerStats(
        opened=True,
        min_size=min_size,
        max_size=max_size,
        pool_size=size,
        in_use=size - available,
        available=available,
        waiting=raw.get("requests_waiting", 0),
    )


def publish_checkpointer_metrics(stats: CheckpointerStats, service: str) -> None:
    """The checkpointer pool gauges (a workflow worker child publishes them after each task)."""
    if not stats.opened:
        return
    metrics.LANGGRAPH_POOL_SIZE.labels(service).set(stats.pool_size)
    metrics.LANGGRAPH_POOL_IN_USE.labels(service).set(stats.in_use)
    metrics.LANGGRAPH_POOL_MAX.labels(service).set(stats.max_size)
