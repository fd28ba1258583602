"""One event loop per worker process, reused by every task the process runs.

``asyncio.run()`` per task would create and close a loop each time; the engine's pooled asyncpg
connections belong to the loop that opened them, so the second task would fail with "Future attached
to a different loop" or "another operation is in progress". A Celery child therefore keeps one loop
from ``worker_process_init`` to ``worker_process_shutdown``; tasks run their coroutines on it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None


def start_process_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid
    if _loop is None or _pid != os.getpid() or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        _pid = os.getpid()
        asyncio.set_event_loop(_loop)
    return _loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on this process's loop (created on first use outside a worker)."""
    return start_process_loop().run_until_complete(coro)


def stop_process_loop() -> None:
    global _loop
    if _loop is not None and _pid == os.getpid() and not _loop.is_closed():
        _loop.run_until_complete(_loop.shutdown_asyncgens())
        _loop.close()
    _loop = None
