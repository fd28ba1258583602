"""Database trouble becomes a quick, explained 503 with Retry-After: never a hang, never a 500.

* ``sqlalchemy.exc.TimeoutError``: the pool stayed exhausted for DB_POOL_TIMEOUT seconds;
* connection-level failures (server down, restarting, network): the database is unavailable;
* a new connection the server refused for want of slots (SQLSTATE 53300: the cap on this environment's
  database or role, or the server's max_connections): ``allocation_exhausted``;
* a database deadline that expired (connect timeout, asyncpg's command_timeout, statement_timeout):
  ``database_timeout``, the server or the network stalled;
* the request's own deadline (``app.api.deadline``): ``request_timeout``.

Other database errors (a constraint violated, a bad query) are bugs or bad input and are not disguised:
they are logged with their traceback and answered with a generic 500 body that shows nothing of them.

Invalid requests answer 422 without echoing what was sent (``input``): the client has it, an echoed
``api_key`` is a secret in a response, and an echoed lone surrogate or NaN cannot be encoded as JSON.
"""

from __future__ import annotations

import socket

import kombu.exceptions
import redis.exceptions
import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc

from app import sizing
from app.api.quota import QuotaExceeded, quota_exceeded
from app.config.settings import get_settings
from app.core.logging import LogRateLimiter
from app.db.errors import (
    is_allocation_exhausted,
    is_database_misconfigured,
    is_database_timeout,
    is_database_unavailable,
    misconfiguration_fix,
)

log = structlog.get_logger("app.api")


def _first_this_second(request: Request, reason: str) -> bool:
    """During an outage every request is rejected: one warning per reason per second (per app, kept on
    its state by ``install_error_handlers``) tells the story."""
    limiter: LogRateLimiter = request.app.state.rejection_log
    return limiter.allow(reason)


def unavailable(reason: str, detail: str) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={"detail": detail, "reason": reason},
        headers={"Retry-After": str(get_settings().RETRY_AFTER_SECONDS)},
    )


async def pool_exhausted(request: Request, error: Exception) -> JSONResponse:
    if _first_this_second(request, "pool"):
        log.warning("request_rejected_pool_exhausted", path=request.url.path)
    busy = sizing.pool_sizing(get_settings()).max_connections
    return unavailable(
        "db_pool_exhausted", f"all {busy} database connections of this process are busy; retry shortly"
    )


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    if is_database_timeout(error):
        if _first_this_second(request, "database_timeout"):
            log.warning(
                "request_rejected_database_timeout",
                path=request.url.path,
                error_type=type(error).__name__,
                error=str(error),
            )
        return unavailable("database_timeout", "the database did not answer in time; retry shortly")
    if _first_this_second(request, "database"):
        log.warning("request_rejected_database_unavailable", path=request.url.path, error=str(error))
    return unavailable("database_unavailable", "the database is unreachable; retry shortly")


async def database_misconfigured(request: Request, error: Exception) -> JSONResponse:
    # An error, not a warning: nothing will work until someone fixes DATABASE_URL (or the server).
    if _first_this_second(request, "misconfigured"):
        log.error("request_rejected_database_misconfigured", path=request.url.path, error=str(error))
    return unavailable("database_misconfigured", f"{misconfiguration_fix(error)}; retry later")


async def allocation_exhausted(request: Request, error: Exception) -> JSONResponse:
    # Not this process's pool (db_pool_exhausted) and not an outage: the server holds as many of this
    # environment's connections as it allows. Counted where refused (db_allocation_exhausted_total).
    if _first_this_second(request, "allocation"):
        log.warning("request_rejected_allocation_exhausted", path=request.url.path, error=str(error))
    return unavailable(
        "allocation_exhausted",
        "the database refused a new connection: this environment's connection allocation is in use; "
        "retry shortly",
    )


async def dbapi_error(request: Request, error: Exception) -> JSONResponse:
    if is_database_misconfigured(error):
        return await database_misconfigured(request, error)
    if is_allocation_exhausted(error):
        return await allocation_exhausted(request, error)
    if is_database_unavailable(error):
        return await database_unavailable(request, error)
    raise error


async def queue_unavailable(request: Request, error: Exception) -> JSONResponse:
    if _first_this_second(request, "queue"):
        log.warning("request_rejected_queue_unavailable", path=request.url.path, error=str(error))
    return unavailable("queue_unavailable", "the task queue (Redis) is unreachable; nothing was stored")


async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    # loc, msg and type say what is wrong; ctx (the violated limit or pattern) holds no client data.
    errors = [{k: v for k, v in e.items() if k != "input"} for e in error.errors()]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """Every unhandled error: the traceback goes to the log, the client learns only that it failed.
    Installed as the 500 handler so that Starlette's debug page (tracebacks with SQL parameters) can
    never be the answer, whatever DEBUG says. Starlette re-raises the error after this response, and
    uvicorn logs its traceback (through the same redacting log pipeline): one line here says which
    request it was."""
    log.error("request_failed", path=request.url.path, method=request.method, error_type=type(error).__name__)
    return JSONResponse(status_code=500, content={"detail": "internal error", "reason": "internal_error"})


def install_error_handlers(app: FastAPI) -> None:
    app.state.rejection_log = LogRateLimiter(interval=1.0)
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)
    # Redis unreachable where a request cannot do without it. Creating a roadmap is not such a place:
    # its task waits in the outbox (app.messaging.outbox).
    app.add_exception_handler(kombu.exceptions.OperationalError, queue_unavailable)
    app.add_exception_handler(redis.exceptions.ConnectionError, queue_unavailable)
    app.add_exception_handler(QuotaExceeded, quota_exceeded)
    app.add_exception_handler(exc.TimeoutError, pool_exhausted)
    app.add_exception_handler(exc.DBAPIError, dbapi_error)
    # asyncpg raises these directly, unwrapped, when it cannot even open a connection.
    for error in (ConnectionError, socket.gaierror, TimeoutError):
        app.add_exception_handler(error, database_unavailable)
