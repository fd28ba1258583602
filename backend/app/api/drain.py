"""Whether this API process is draining, and what changes while it is.

Draining starts at SIGTERM (``app.api.server`` stops listening and calls ``begin``): the process serves
only the connections already open, for API_DRAIN_SECONDS. Meanwhile every response not yet started
carries ``Connection: close`` and its connection is closed once it is sent, so a client (or a load
balancer's pooled connection) moves to another server after this answer instead of finding the
connection closed under its next request; and ``/health`` answers 503 ``draining``, so a health checker
on a kept-alive connection takes the instance out.

Done on the connection, not by a middleware: uvicorn writes ``Connection: close`` and closes after the
response of a request cycle whose ``keep_alive`` is off. ``begin`` turns it off for the requests already
read, and the HTTP protocol (``app.api.http_protocol``) for each request read after; a middleware's
extra layer round every response cost every request for an event that happens once per process.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

log = structlog.get_logger("app.drain")
_draining = False


def begin(connections: Iterable[object] = ()) -> None:
    """Start draining; ``connections`` (uvicorn's protocol instances) close after their current response."""
    global _draining
    if not _draining:
        _draining = True
        log.info("api_draining")
    for connection in connections:
        close_after_response(connection)


def draining() -> bool:
    return _draining


def close_after_response(connection: object) -> None:
    """The request being served on ``connection`` is its last, unless its response has started (its
    headers are gone; the next request on it gets the header instead)."""
    cycle = getattr(connection, "cycle", None)
    if cycle is not None and not cycle.response_started:
        cycle.keep_alive = False
