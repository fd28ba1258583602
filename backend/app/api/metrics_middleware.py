"""HTTP request counters and latency, labelled by route template (not raw path: bounded cardinality)."""

from __future__ import annotations

import functools
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import metrics


class HttpMetricsMiddleware:
    """Plain ASGI middleware: cheaper than BaseHTTPMiddleware and it keeps streaming intact."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            observe(scope.get("method", "GET"), scope.get("route"), status, time.perf_counter() - started)


def observe(method: str, route: object, status: int, seconds: float) -> None:
    """Count one answer under its route's template (``route``: the matched route, or None)."""
    counter, latency = _series(method, getattr(route, "path", None) or "unmatched", status)
    counter.inc()
    latency.observe(seconds)


@functools.cache
def _series(method: str, template: str, status: int) -> tuple[Any, Any]:
    """The two series of a (method, route, status), looked up once: ``labels()`` validates and locks on
    every call. Bounded like the labels themselves (route templates, not paths; httptools' methods)."""
    return (
        metrics.HTTP_REQUESTS.labels(method, template, str(status)),
        metrics.HTTP_LATENCY.labels(method, template),
    )
