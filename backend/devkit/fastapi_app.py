"""FastAPI's own pace for scripts/bench_request_path.py: the framework, asyncpg and pydantic, no project.

``GET /api/v1/task-logs`` as a minimal FastAPI app would write it: the same two queries (rows and count)
on an asyncpg pool of 10 per worker, the same response model shape, validated query parameters, and
an auth dependency of the same shape (HTTPBearer, an HS256 token verified with PyJWT, an admin check).
The gap between the project and this app is what the project adds between FastAPI and asyncpg; the
gap between this app and devkit/bare_app.py is FastAPI's. Run by the benchmark, never deployed:

    BARE_DATABASE_URL=postgresql://... JWT_SECRET_KEY=... uvicorn devkit.fastapi_app:app
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import jwt
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

POOL: asyncpg.Pool | None = None
SECRET = os.environ.get("JWT_SECRET_KEY", "")


class TaskLog(BaseModel):
    id: int
    task_id: str | None
    task_name: str
    queue: str | None
    event: str
    level: str
    payload: dict[str, Any]
    created_at: datetime


class TaskLogPage(BaseModel):
    items: list[TaskLog]
    total: int
    limit: int
    offset: int


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global POOL
    POOL = await asyncpg.create_pool(os.environ["BARE_DATABASE_URL"], min_size=1, max_size=10, init=_init)
    yield
    await POOL.close()


async def admin(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> dict[str, Any]:
    if credentials is None:
        raise HTTPException(401, "a bearer token is required")
    try:
        claims = jwt.decode(credentials.credentials, SECRET, algorithms=["HS256"])
    except jwt.InvalidTokenError:
        raise HTTPException(401, "invalid token") from None
    if claims.get("role") != "admin":
        raise HTTPException(403, "the admin role is required")
    return claims


app = FastAPI(lifespan=lifespan)


@app.get("/api/v1/task-logs", response_model=TaskLogPage)
async def task_logs(
    _admin: Annotated[dict[str, Any], Depends(admin)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> TaskLogPage:
    assert POOL is not None
    async with POOL.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, task_id, task_name, queue, event, level, payload, created_at FROM task_logs"
            " ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2",
            limit,
            offset,
        )
        total = await conn.fetchval("SELECT count(*) FROM task_logs")
    return TaskLogPage(items=[TaskLog(**dict(r)) for r in rows], total=total, limit=limit, offset=offset)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy"}
