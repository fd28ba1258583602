"""Coalesce concurrent small writes into one statement: one checkout per batch, not one per caller.

Concept generation runs ``CONCEPT_CONCURRENCY_LIMIT`` concepts at once, and concepts started together
finish together (their LLM calls take about as long). Written one by one, such a wave makes as many
checkouts within a few milliseconds of each other, which is what pushed a 10-connection pool to
``db_pool_critical_usage``. Here each caller adds its item and awaits its own result; the first item
of a batch schedules a flush ``linger`` seconds later, and everything added by then is written by one
statement in one short session.

A flush answers each key with its result, or with an exception for that key alone (a batch that fails
as a whole can be retried item by item, so one bad item does not fail the others); an exception raised
by the flush itself reaches every caller of the batch. Every caller gets an answer: a key missing from
the results, or a flush cancelled before it ran, is an error for its callers, never a wait forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


class Coalescer(Generic[K, V, R]):
    """``await coalescer.submit(key, value)`` -> this key's result from ``flush({key: value, ...})``."""

    def __init__(
        self,
        flush: Callable[[dict[K, V]], Awaitable[Mapping[K, R | BaseException]]],
        *,
        linger: float = 0.005,
    ) -> None:
        self._flush_many = flush
        self._linger = linger
        self._pending: dict[K, tuple[V, asyncio.Future[R]]] = {}
        self._scheduled: asyncio.Task[None] | None = None

    async def submit(self, key: K, value: V) -> R:
        if key in self._pending:
            raise ValueError(f"{key!r} is already waiting in this batch")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending[key] = (value, future)
        if self._scheduled is None:
            self._scheduled = asyncio.create_task(self._flush_soon())
        return await future

    async def _flush_soon(self) -> None:
        batch: dict[K, tuple[V, asyncio.Future[R]]] = {}
        try:
            await asyncio.sleep(self._linger)
            batch, self._pending, self._scheduled = self._pending, {}, None
            results = await self._flush_many({key: value for key, (value, _) in batch.items()})
        except BaseException as error:  # every caller of the batch sees the flush's failure
            if not batch:  # cancelled while lingering: the batch never started
                batch, self._pending, self._scheduled = self._pending, {}, None
            for _, future in batch.values():
                if not future.done():
                    future.set_exception(error if isinstance(error, Exception) else RuntimeError(repr(error)))
            if not isinstance(error, Exception):
                raise
            return
        for key, (_, future) in batch.items():
            if future.done():
                continue
            result = results.get(key, LookupError(f"the flush returned no result for {key!r}"))
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
