"""The FastAPI application (``uvicorn app.main:app``).

``app`` is built when it is first asked for (uvicorn's import of ``app.main:app``, a test's
``from app.main import app``), not when this module is imported: building it reads the settings,
configures logging and runs the budget guard, which must happen in the process that serves.

Resources belong to ``app.runtime``: the engine, Redis clients and so on are built on the first request
that needs them, in the worker process, never in uvicorn's supervisor; the lifespan closes them all at
shutdown and tells prometheus-client the process is gone.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from app import runtime, sizing
from app.api import background
from app.api.admission import AdmissionControl, admission_limiter
from app.api.deadline import RequestDeadlineMiddleware
from app.api.errors import install_error_handlers
from app.api.metrics_middleware import HttpMetricsMiddleware
from app.api.routes import API_V1, admin, fleet, health, metrics, roadmaps, task_logs
from app.budget.guard import enforce_budget
from app.config.settings import get_settings
from app.core.logging import configure_logging
from app.core.metrics import mark_this_process_dead

log = structlog.get_logger("app.main")


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    log.info(
        "api_starting",
        environment=settings.ENVIRONMENT,
        pool_size=sizing.pool_sizing(settings).pool_size,
        max_overflow=sizing.pool_sizing(settings).max_overflow,
        pool_timeout=settings.DB_POOL_TIMEOUT,
    )
    # Everything imported and built so far lives as long as the process: moved out of the collector's
    # reach, a full collection no longer walks it. Walking it stalled the event loop for tens of
    # milliseconds every few seconds under load (one worker: p99 82 ms, 17 ms frozen; bench_request_path).
    gc.freeze()
    jobs = background.start(settings)
    try:
        yield
    finally:
        await background.stop(jobs)
        await runtime.current().aclose()
        mark_this_process_dead()
        log.info("api_stopped")


def create_app() -> FastAPI:
    settings = get_settings()
    # Before uvicorn's first line, so every line of the process has one format.
    configure_logging(settings)
    if not settings.DB_BUDGET_CHECKED:  # railway_entrypoint.sh checked it already
        # Strict enforcement refuses to start here: InvalidSettingsError exits with its one line.
        enforce_budget(settings, "api")
    # No debug=settings.DEBUG: FastAPI's debug mode makes Starlette answer a 500 with its traceback
    # page (locals, SQL parameters). Errors are logged instead (app.api.errors.internal_error).
    # /docs and /redoc from assets the app serves itself (fastapi-offline ships Swagger UI and ReDoc):
    # FastAPI's defaults load them from a CDN, a blank page without the internet.
    # No max_body_size: MAX_REQUEST_BODY_BYTES is the HTTP protocol's (app.api.http_protocol), which
    # refuses a body before the app runs and costs a request without one nothing.
    app = FastAPIOffline(title=settings.PROJECT_NAME, lifespan=lifespan)
    # Innermost: its 503 still gets CORS headers and is counted by the metrics middleware.
    app.add_middleware(RequestDeadlineMiddleware)
    # Next: a request refused for overload costs no routing, authentication or database round trip.
    limiter = admission_limiter(sizing.pool_sizing(settings, "api").max_connections)
    if limiter is not None:
        app.add_middleware(
            AdmissionControl,
            limiter=limiter,
            prefix=API_V1 + "/",
            exempt=API_V1 + "/admin",
            enforce=settings.API_ADMISSION != "edge",
        )
    if settings.CORS_ORIGINS:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ORIGINS,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    # Outermost: every answer is counted, the refusals of those inside it included. (Connection: close
    # while draining is the HTTP protocol's: app.api.drain.)
    app.add_middleware(HttpMetricsMiddleware)
    install_error_handlers(app)
    # Busiest first: FastAPI matches an included router's routes at request time, one router after the
    # other, so a request pays for every route ahead of its own (task logs behind the other five
    # routers: 28 us of matching, 13 us right behind roadmaps). The probes and the scrape come a few
    # times a minute; their paths overlap no other, so the order changes no answer.
    app.include_router(roadmaps.router)
    app.include_router(task_logs.router)
    app.include_router(admin.router)
    app.include_router(fleet.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    return app


@cache
def _app() -> FastAPI:
    return create_app()


def __getattr__(name: str) -> FastAPI:
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
