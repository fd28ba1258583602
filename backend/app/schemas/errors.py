"""The error bodies the API answers with, documented in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorOut(BaseModel):
    detail: str
    # machine-readable, on 503s (db_pool_exhausted, database_unavailable, ...) and 429s (rate_limited, ...)
    reason: str | None = None


def _doc(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": ErrorOut, "description": description}
    if headers:
        entry["headers"] = headers
    return entry


_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}
}

UNAVAILABLE = {
    503: _doc(
        "database pool exhausted, database or task queue unreachable, this environment's connection "
        "allocation full on the server (reason allocation_exhausted), or the database refused this "
        "service's role or database name (reason database_misconfigured)",
        _RETRY_AFTER,
    )
}
AUTH = {
    401: _doc(
        "missing, invalid or expired bearer token", {"WWW-Authenticate": {"schema": {"type": "string"}}}
    ),
    403: _doc("the token's role may not do this"),
}
NOT_FOUND = {404: _doc("no such resource")}
BAD_BODY = {
    400: _doc("the body is not valid JSON"),
    # Answered by Starlette's body limiter, before any route runs: plain text, not ErrorOut.
    413: {
        "description": "the body is larger than MAX_REQUEST_BODY_BYTES",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
}
CONFLICT = {409: _doc("already exists")}
IDEMPOTENCY_CONFLICT = {409: _doc("the Idempotency-Key was used for a different request")}
QUOTA = {
    429: _doc(
        "ROADMAP_CREATE_RATE_LIMIT (reason rate_limited, with Retry-After) or ROADMAP_MAX_IN_PROGRESS "
        "(reason too_many_in_progress) reached",
        _RETRY_AFTER,
    )
}
