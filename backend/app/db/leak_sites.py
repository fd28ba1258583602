"""Who holds a pooled connection too long: the code behind a ``db_connection_leak_suspected`` event.

A checkout records only its asyncio task (one call); the stack is walked when the leak timer fires,
which is rare, instead of on every checkout, which cost 7% of a read's CPU. By then the task is
suspended where it still holds the connection, so the event names that code: its await chain, from
the task's coroutine down to the innermost awaitable, read through ``cr_await``.
"""

from __future__ import annotations

import asyncio
from types import CodeType, FrameType

# Frames from these files are the pool's own machinery, not the code that holds a connection.
_MACHINERY = (
    "/sqlalchemy/",
    "/app/db/",
    "/asyncio/",
    "/greenlet/",
    "contextlib.py",
    "/starlette/",
    "/fastapi/",
)


def _machinery(code: CodeType) -> bool:
    name = code.co_filename
    return "site-packages" in name or any(part in name for part in _MACHINERY)


def _await_chain(task: asyncio.Task[object]) -> list[FrameType]:
    """The frames of a suspended task, outermost first (``Task.get_stack`` gives only the outermost)."""
    frames: list[FrameType] = []
    awaitable: object = task.get_coro()
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return frames


def holder_site(task: asyncio.Task[object] | None, depth: int = 3) -> str:
    """The innermost run of the holder's frames outside the pool machinery, innermost first."""
    if task is None:
        return "unknown"
    if task.done():
        return f"{task.get_coro().__qualname__} (finished without returning the connection)"  # type: ignore[union-attr]
    sites: list[str] = []
    for frame in reversed(_await_chain(task)):
        if not _machinery(frame.f_code):
            sites.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
            if len(sites) == depth:
                break
        elif sites:
            break
    return " <- ".join(sites) or task.get_coro().__qualname__  # type: ignore[union-attr]
