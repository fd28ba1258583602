"""Whether this API process is draining, and what changes while it is.

Draining starts at SIGTERM (``app.api.server`` stops listening and calls ``begin``): the process serves
only the connections already open, for API_DRAIN_SECONDS. Meanwhile every response carries
``Connection: close``, so a client (or a load balancer's pooled connection) moves to another server
after this answer instead of finding the connection closed under its next request, and ``/health``
answers 503 ``draining``, so a health checker on a kept-alive connection takes the instance out.
"""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("app.drain")
_draining = False


def begin() -> None:
    global _draining
    if not _draining:
        _draining = True
        log.info("api_draining")


def draining() -> bool:
    return _draining


class ConnectionCloseWhileDraining:
    """Adds ``Connection: close`` to every response started while the process drains (uvicorn then
    closes the connection once the response is sent)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and _draining:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)
