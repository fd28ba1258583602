"""Database trouble becomes a quick, explained 503 with Retry-After: never a hang, never a 500.

* ``sqlalchemy.exc.TimeoutError``: the pool stayed exhausted for DB_POOL_TIMEOUT seconds;
* connection-level failures (server down, restarting, network): the database is unavailable;
* a database deadline that expired (connect timeout, asyncpg's command_timeout, statement_timeout):
  ``database_timeout``, the server or the network stalled;
* the request's own deadline (``app.api.deadline``): ``request_timeout``.

Other database errors (a constraint violated, a bad query) are bugs or bad input and are not disguised.
"""

from __future__ import annotations

import socket

import kombu.exceptions
import redis.exceptions
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc

from app.config.settings import get_settings
from app.core.logging import LogRateLimiter
from app.db.errors import is_database_timeout, is_database_unavailable

log = structlog.get_logger("app.api")
# During an outage every request is rejected: one warning per reason per second tells the story.
_rejections = LogRateLimiter(interval=1.0)


def unavailable(reason: str, detail: str) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={"detail": detail, "reason": reason},
        headers={"Retry-After": str(get_settings().RETRY_AFTER_SECONDS)},
    )


async def pool_exhausted(request: Request, error: Exception) -> JSONResponse:
    if _rejections.allow("pool"):
        log.warning("request_rejected_pool_exhausted", path=request.url.path)
    return unavailable(
        "db_pool_exhausted",
        f"all {get_settings().pool().max_connections} database connections of this process are busy; "
        "retry shortly",
    )


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    if is_database_timeout(error):
        if _rejections.allow("database_timeout"):
            log.warning(
                "request_rejected_database_timeout",
                path=request.url.path,
                error_type=type(error).__name__,
                error=str(error),
            )
        return unavailable("database_timeout", "the database did not answer in time; retry shortly")
    if _rejections.allow("database"):
        log.warning("request_rejected_database_unavailable", path=request.url.path, error=str(error))
    return unavailable("database_unavailable", "the database is unreachable; retry shortly")


async def dbapi_error(request: Request, error: Exception) -> JSONResponse:
    if is_database_unavailable(error):
        return await database_unavailable(request, error)
    raise error


async def queue_unavailable(request: Request, error: Exception) -> JSONResponse:
    if _rejections.allow("queue"):
        log.warning("request_rejected_queue_unavailable", path=request.url.path, error=str(error))
    return unavailable("queue_unavailable", "the task queue (Redis) is unreachable; nothing was stored")


def install_error_handlers(app: FastAPI) -> None:
    # Redis unreachable where a request cannot do without it. Creating a roadmap is not such a place:
    # its task waits in the outbox (app.tasks.outbox).
    app.add_exception_handler(kombu.exceptions.OperationalError, queue_unavailable)
    app.add_exception_handler(redis.exceptions.ConnectionError, queue_unavailable)
    app.add_exception_handler(exc.TimeoutError, pool_exhausted)
    app.add_exception_handler(exc.DBAPIError, dbapi_error)
    # asyncpg raises these directly, unwrapped, when it cannot even open a connection.
    for error in (ConnectionError, socket.gaierror, TimeoutError):
        app.add_exception_handler(error, database_unavailable)
