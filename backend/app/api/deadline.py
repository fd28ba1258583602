"""Every request's deadline: past REQUEST_TIMEOUT_SECONDS the client gets a 503, never a hang.

The database's own deadlines (connect timeout, the idle ping, ``command_timeout``, ``statement_timeout``,
DB_POOL_TIMEOUT) each bound one step, but a request may take several steps, and a step nobody bounded
(a library call, a DNS lookup) would still hang it. This is the backstop over the whole request: the
handler is cancelled and the client gets ``503 request_timeout`` with ``Retry-After``.

Cancelling is safe for the pool: SQLAlchemy treats a cancellation inside a statement as a disconnect
and discards that connection (it never returns mid-protocol), and ``safe_session()`` rolls back in
``finally``. The cleanup runs before the answer is sent, and stays short because every statement it
could issue is bounded by ``command_timeout``.

A response that has already started cannot be replaced: then the connection is simply closed, which is
what the client of a half-sent response sees on any server error.
"""

from __future__ import annotations

import asyncio

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import unavailable
from app.config.settings import get_settings
from app.core.logging import LogRateLimiter

log = structlog.get_logger("app.api")
_timeouts = LogRateLimiter(interval=1.0)


class RequestDeadlineMiddleware:
    """Plain ASGI middleware (like HttpMetricsMiddleware): no BaseHTTPMiddleware task juggling. The
    deadline is read per request (settings are cached), so a test may change it without a new app."""

    def __init__(self, app: ASGIApp, seconds: float | None = None) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seconds = self.seconds or get_settings().REQUEST_TIMEOUT_SECONDS
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                await self.app(scope, receive, send_tracking)
        except TimeoutError:
            if started or not deadline.expired():
                raise
            if _timeouts.allow("request"):
                log.warning("request_rejected_deadline", path=scope.get("path"), deadline=seconds)
            response = unavailable(
                "request_timeout", f"the request did not finish within {seconds:g} s; retry shortly"
            )
            await response(scope, receive, send)
