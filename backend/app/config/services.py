"""Each service's own variables, declared by name so a reader can grep them and the type checker sees them.

The names follow ``app.topology`` (``<PREFIX>_REPLICAS``, ``<PREFIX>_DB_POOL_SIZE`` ...) and the defaults
are the production column of its ``processes`` and ``time_limit``; tests/test_settings.py keeps the two
equal, so a service added to the topology without its variables here fails a test, not a deploy.

A per-service pool left unset (None) falls back to the shared ``DB_POOL_SIZE`` / ``DB_MAX_OVERFLOW``
(``app.sizing.pool_sizing``). A time limit is the hard one; the soft limit (SoftTimeLimitExceeded, a
chance to clean up) is 90% of it.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class ServiceSettings(BaseSettings):
    """Replicas (each brings all its processes' pools), processes per replica, per-service pools."""

    # --- api: uvicorn workers per replica (the guide's name) -------------------------------------------
    UVICORN_WORKERS: int = Field(8, ge=1, le=64)
    API_REPLICAS: int = Field(1, ge=1, le=100)
    API_DB_POOL_SIZE: int | None = Field(None, ge=1, le=200)
    API_DB_MAX_OVERFLOW: int | None = Field(None, ge=0, le=200)

    # --- celery_logs: Celery children per replica ---------------------------------------------------------
    CELERY_LOGS_CONCURRENCY: int = Field(8, ge=1, le=64)
    CELERY_LOGS_REPLICAS: int = Field(1, ge=1, le=100)
    CELERY_LOGS_DB_POOL_SIZE: int | None = Field(None, ge=1, le=200)
    CELERY_LOGS_DB_MAX_OVERFLOW: int | None = Field(None, ge=0, le=200)
    CELERY_LOGS_TIME_LIMIT: int = Field(120, ge=1)

    # --- celery_content -----------------------------------------------------------------------------------
    CELERY_CONTENT_CONCURRENCY: int = Field(10, ge=1, le=64)
    CELERY_CONTENT_REPLICAS: int = Field(1, ge=1, le=100)
    CELERY_CONTENT_DB_POOL_SIZE: int | None = Field(None, ge=1, le=200)
    CELERY_CONTENT_DB_MAX_OVERFLOW: int | None = Field(None, ge=0, le=200)
    CELERY_CONTENT_TIME_LIMIT: int = Field(900, ge=1)

    # --- celery_workflow (its checkpointer pool: LANGGRAPH_POOL_MAX_SIZE) ---------------------------------
    CELERY_WORKFLOW_CONCURRENCY: int = Field(6, ge=1, le=64)
    CELERY_WORKFLOW_REPLICAS: int = Field(1, ge=1, le=100)
    CELERY_WORKFLOW_DB_POOL_SIZE: int | None = Field(None, ge=1, le=200)
    CELERY_WORKFLOW_DB_MAX_OVERFLOW: int | None = Field(None, ge=0, le=200)
    CELERY_WORKFLOW_TIME_LIMIT: int = Field(3600, ge=1)
