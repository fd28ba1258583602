"""app.db.batch.Coalescer: callers that arrive together share one flush; each gets its own result."""

from __future__ import annotations

import asyncio

import pytest

from app.db.batch import Coalescer


async def test_concurrent_submissions_share_one_flush() -> None:
    flushes: list[dict[int, str]] = []

    async def flush(items: dict[int, str]) -> dict[int, str]:
        flushes.append(dict(items))
        return {key: value.upper() for key, value in items.items()}

    coalescer: Coalescer[int, str, str] = Coalescer(flush, linger=0.01)
    results = await asyncio.gather(*(coalescer.submit(i, f"v{i}") for i in range(5)))
    assert results == ["V0", "V1", "V2", "V3", "V4"]
    assert flushes == [{i: f"v{i}" for i in range(5)}]
    # a later caller starts a new batch
    assert await coalescer.submit(9, "late") == "LATE"
    assert len(flushes) == 2


async def test_a_failed_flush_fails_every_caller_of_its_batch() -> None:
    async def flush(items: dict[int, None]) -> dict[int, None]:
        raise RuntimeError("database went away")

    coalescer: Coalescer[int, None, None] = Coalescer(flush, linger=0.0)
    results = await asyncio.gather(*(coalescer.submit(i, None) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError):
        await coalescer.submit(4, None)  # and the next batch tries again


async def test_every_caller_gets_an_answer() -> None:
    async def flush(items: dict[int, None]) -> dict[int, object]:
        # key 1 refused on its own, key 2 forgotten by the flush
        return {0: "ok", 1: ValueError("refused")}

    coalescer: Coalescer[int, None, object] = Coalescer(flush, linger=0.0)  # type: ignore[arg-type]
    results = await asyncio.gather(*(coalescer.submit(i, None) for i in range(3)), return_exceptions=True)
    assert results[0] == "ok"
    assert isinstance(results[1], ValueError) and isinstance(results[2], LookupError)


async def test_a_key_waits_once_per_batch() -> None:
    async def flush(items: dict[int, None]) -> dict[int, None]:
        return dict.fromkeys(items)

    coalescer: Coalescer[int, None, None] = Coalescer(flush, linger=0.05)
    first = asyncio.ensure_future(coalescer.submit(1, None))
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="already waiting"):
        await coalescer.submit(1, None)
    assert await first is None


async def test_a_flush_cancelled_while_lingering_fails_its_callers_and_the_next_batch_runs() -> None:
    async def flush(items: dict[int, None]) -> dict[int, str]:
        return dict.fromkeys(items, "done")

    coalescer: Coalescer[int, None, str] = Coalescer(flush, linger=0.2)
    waiting = asyncio.ensure_future(coalescer.submit(1, None))
    await asyncio.sleep(0.01)
    assert coalescer._scheduled is not None
    coalescer._scheduled.cancel()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(waiting, 1)
    assert await asyncio.wait_for(coalescer.submit(2, None), 1) == "done"
