"""Where a pooled connection was asked for: the code behind a ``db_connection_leak_suspected`` event.

Walked on every checkout while leak detection is on (``DB_LEAK_DETECTION_THRESHOLD``), so it stops as
soon as it has the caller's frames and remembers which files are machinery.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import CodeType, FrameType

import greenlet

# Frames from these files are the pool's own machinery, not the code that asked for a connection.
_MACHINERY = (
    "/sqlalchemy/",
    "/app/db/",
    "/asyncio/",
    "/greenlet/",
    "contextlib.py",
    "/starlette/",
    "/fastapi/",
)


def _stack() -> Iterator[FrameType]:
    """This thread's frames, newest first, through the greenlets SQLAlchemy's asyncio layer runs the
    pool in: the code that awaited the connection is suspended in a parent greenlet."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        yield frame
        frame = frame.f_back
    current = greenlet.getcurrent().parent
    while current is not None:
        frame = current.gr_frame
        while frame is not None:
            yield frame
            frame = frame.f_back
        current = current.parent


# Whether a file is the pool's machinery, decided once per file name: the walk runs on every checkout
# while leak detection is on, so each frame costs a dict lookup (str hashes are cached), not seven
# substring searches.
_is_machinery: dict[str, bool] = {}


def _machinery(code: CodeType) -> bool:
    name = code.co_filename
    known = _is_machinery.get(name)
    if known is None:
        known = _is_machinery[name] = "site-packages" in name or any(part in name for part in _MACHINERY)
    return known


def checkout_site(depth: int = 3) -> str:
    """Where the connection was asked for: the innermost run of frames outside the pool machinery.

    The walk stops at the first machinery frame after that run (or at ``depth`` frames): past it lie
    only the framework and the event loop, and walking them on every checkout cost more than the
    query it watched.
    """
    sites: list[str] = []
    for frame in _stack():
        if not _machinery(frame.f_code):
            sites.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
            if len(sites) == depth:
                break
        elif sites:
            break
    return " <- ".join(sites) or "unknown"
