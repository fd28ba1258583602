"""This process's resources and their lifecycle, in one place: the database engine, the checkpointer
pool, the Redis clients and the event loop.

Why one owner: a pool (or a Redis socket, or an event loop) created before ``fork`` is inherited by the
children, and two processes talking over one socket corrupt each other's protocol state, the classic
Celery prefork bug. So every resource here is

* made on first use, in the process that uses it (nothing connects at import, nothing in a prefork
  parent or in uvicorn's supervisor);
* forgotten in a forked child, in one place (``os.register_at_fork``), without closing what belongs
  to the parent: each resource says how (``abandon``), e.g. an engine drops its pool with
  ``dispose(close=False)``, SQLAlchemy's documented recipe for fork;
* closed at shutdown, newest first (FastAPI's lifespan, Celery's ``worker_process_shutdown``).

The layers that own a kind of resource (``app.db.engine``, ``app.core.orchestrator_factory``,
``app.core.redis_client``) say how to build, close and abandon it; this module holds none of their
knowledge, so it sits below all of them. Tests start each case from a fresh runtime (``reset()``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import structlog

from app.config.settings import get_settings

log = structlog.get_logger("app.runtime")
T = TypeVar("T")

Closer = Callable[[Any], Awaitable[None]]
Abandoner = Callable[[Any], None]


@dataclass
class _Held:
    value: Any
    close: Closer | None
    abandon: Abandoner | None


class Runtime:
    """One process's resources. Build them through ``get`` / ``open``; never keep one in a global."""

    def __init__(self, service: str | None = None) -> None:
        self.pid = os.getpid()
        self._service = service
        self._held: dict[str, _Held] = {}
        self._opening: dict[str, asyncio.Future[Any]] = {}
        # Sync clients are built from request threadpools too; reentrant, since one resource may be
        # built from another (the quota's limiter from the Redis client).
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inherited: list[Any] = []  # the parent's, never used and never finalized here
        _every_runtime.add(self)

    # --- which service this process is -----------------------------------------------------------

    @property
    def service(self) -> str:
        """The service whose pools this process opens: named by a Celery worker (from its queue), else
        SERVICE_TYPE. It decides the pool sizes and every connection's ``application_name``."""
        return self._service or get_settings().SERVICE_TYPE

    def name_service(self, service: str) -> None:
        """Before the first resource is built (a worker parent names it before forking its children,
        who inherit the name: it is configuration, not a socket)."""
        self._service = service

    # --- resources -------------------------------------------------------------------------------

    def get(
        self,
        key: str,
        build: Callable[[], T],
        *,
        close: Callable[[T], Awaitable[None]] | None = None,
        abandon: Callable[[T], None] | None = None,
    ) -> T:
        """This process's ``key`` resource, built by ``build()`` on first use."""
        held = self._held.get(key)
        if held is None:
            with self._lock:
                held = self._held.get(key)
                if held is None:
                    held = self._held[key] = _Held(build(), close, abandon)
        return held.value

    async def open(
        self,
        key: str,
        opener: Callable[[], Awaitable[T]],
        *,
        close: Callable[[T], Awaitable[None]] | None = None,
        abandon: Callable[[T], None] | None = None,
    ) -> T:
        """Like ``get`` for a resource that is opened asynchronously (a pool that connects first).
        Concurrent first callers share one opening instead of opening two pools."""
        held = self._held.get(key)
        if held is not None:
            return held.value
        opening = self._opening.get(key)
        # An opening cancelled with its loop (a test's, an asyncio.run's) is not waited for; a new one is.
        if opening is None or opening.cancelled() or opening.get_loop() is not asyncio.get_running_loop():
            opening = self._opening[key] = asyncio.ensure_future(opener())
            opening.add_done_callback(partial(self._opened, key, close, abandon))
        # Shielded: a caller cancelled mid-opening leaves it to finish and be held (and closed later).
        return await asyncio.shield(opening)

    def _opened(
        self, key: str, close: Closer | None, abandon: Abandoner | None, opening: asyncio.Future[Any]
    ) -> None:
        if self._opening.get(key) is opening:
            del self._opening[key]
        if opening.cancelled() or opening.exception() is not None:
            return  # the callers get the error; the next one opens again
        if key not in self._held:
            self._held[key] = _Held(opening.result(), close, abandon)

    def peek(self, key: str) -> Any | None:
        """The resource if this process built it, without building it (stats, /health)."""
        held = self._held.get(key)
        return None if held is None else held.value

    async def aclose(self) -> None:
        """Close every resource, newest first; one that fails to close does not keep the rest open."""
        loop = asyncio.get_running_loop()
        pending = [o for o in self._opening.values() if not o.done() and o.get_loop() is loop]
        if pending:  # bounded by their own timeouts; what they open is held, then closed below
            await asyncio.gather(*pending, return_exceptions=True)
        while self._held:
            key, held = self._held.popitem()
            if held.close is None:
                continue
            try:
                await held.close(held.value)
            except Exception as error:  # noqa: BLE001 - shutdown goes on
                log.warning("runtime_close_failed", resource=key, error_type=type(error).__name__)

    # --- the event loop --------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this process's one loop. Not ``asyncio.run()`` per task: pooled asyncpg
        connections belong to the loop that opened them, and a second loop would fail with "Future
        attached to a different loop"."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop.run_until_complete(coro)

    def shutdown(self) -> None:
        """From synchronous code (a Celery child's exit): close the resources on the loop they were
        opened on, then the loop."""
        try:
            if self._held:
                self.run(self.aclose())
        finally:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.close()
            self._loop = None

    # --- fork ------------------------------------------------------------------------------------

    def _forget_after_fork(self) -> None:
        for key, held in self._held.items():
            if held.abandon is not None:
                try:
                    held.abandon(held.value)
                except Exception as error:  # noqa: BLE001 - the child must still start clean
                    log.warning("runtime_abandon_failed", resource=key, error_type=type(error).__name__)
            # Kept referenced for the child's life, so that no finalizer of the parent's objects runs
            # here: a client that closes politely when collected would speak on the parent's socket.
            self._inherited.append(held.value)
        self._held.clear()
        self._opening.clear()
        self._lock = threading.RLock()  # one held by another thread at fork would never be released
        self._loop = None  # the parent's; its selector is not ours to close
        self.pid = os.getpid()


_every_runtime: weakref.WeakSet[Runtime] = weakref.WeakSet()
_current = Runtime()


def current() -> Runtime:
    return _current


def reset(service: str | None = None) -> Runtime:
    """A fresh runtime for this process (tests; the previous one should be closed first)."""
    global _current
    _current = Runtime(service)
    return _current


def _after_fork_in_child() -> None:
    for each in list(_every_runtime):
        each._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
