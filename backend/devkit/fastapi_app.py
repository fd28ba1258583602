"""FastAPI's own pace for scripts/bench_request_path.py: FastAPI, asyncpg and pydantic only.

``GET /api/v1/task-logs`` as a minimal FastAPI app would write it: the same two queries (rows and count)
on an asyncpg pool of 10 per worker, the same response model, validated query parameters, and
an auth dependency of the same shape (HTTPBearer, an HS256 token verified with PyJWT, an admin check).
The gap between the project and this app is what the project adds between FastAPI and asyncpg; the
gap between this app and devkit/bare_app.py is FastAPI's. Run by the benchmark, never deployed:

    BARE_DATABASE_URL=postgresql://... JWT_SECRET_KEY=... uvicorn devkit.fastapi_app:app
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# The response model is the project's own (a plain pydantic model), so the two apps serialise the same
# shape; the pool and the two queries are the bare app's.
from app.schemas.task_logs import TaskLogOut, TaskLogPage
from devkit.bare_app import lifespan, task_log_page

SECRET = os.environ.get("JWT_SECRET_KEY", "")


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
    rows, total = await task_log_page(limit, offset)
    return TaskLogPage(items=[TaskLogOut(**dict(r)) for r in rows], total=total, limit=limit, offset=offset)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy"}
