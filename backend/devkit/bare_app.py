"""The floor for scripts/bench_request_path.py: Starlette and an asyncpg pool, nothing of the project.

The same routes as the project's ``GET /api/v1/task-logs`` and ``GET /api/v1/roadmaps/{id}``, the same
queries (two each: rows and count; roadmap and its concepts) and the same response bodies, with a pool
of 10 per worker like the project's. What this app does not do is the project's price: settings,
validation, pool instrumentation, error mapping, metrics. Run by the benchmarks (``bare_server``), never
deployed:

    BARE_DATABASE_URL=postgresql://... uvicorn devkit.bare_app:app --workers 8
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devkit.api import wait_answering
from devkit.bench import JWT_SECRET
from devkit.ports import free_port

POOL: asyncpg.Pool | None = None


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    global POOL
    POOL = await asyncpg.create_pool(os.environ["BARE_DATABASE_URL"], min_size=1, max_size=10, init=_init)
    yield
    await POOL.close()


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else value


async def task_log_page(limit: int, offset: int) -> tuple[list[asyncpg.Record], int]:
    """The two queries of the project's task-log page (shared with devkit.fastapi_app)."""
    assert POOL is not None
    async with POOL.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, task_id, task_name, queue, event, level, payload, created_at FROM task_logs"
            " ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2",
            limit,
            offset,
        )
        return rows, await conn.fetchval("SELECT count(*) FROM task_logs")


async def task_logs(request: Request) -> Response:
    limit = int(request.query_params.get("limit", 50))
    offset = int(request.query_params.get("offset", 0))
    rows, total = await task_log_page(limit, offset)
    items = [{**dict(r), "created_at": _iso(r["created_at"])} for r in rows]
    return JSONResponse({"items": items, "total": total, "limit": limit, "offset": offset})


async def roadmap(request: Request) -> Response:
    roadmap_id = uuid.UUID(request.path_params["roadmap_id"])
    assert POOL is not None
    async with POOL.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT id, topic, status, requested_concepts, error, created_at, updated_at FROM roadmaps"
            " WHERE id = $1",
            roadmap_id,
        )
        if row is None:
            return JSONResponse({"detail": "not found"}, status_code=404)
        concepts = await conn.fetch(
            "SELECT id, position, title, status, attempts, content, error FROM concepts"
            " WHERE roadmap_id = $1 ORDER BY position",
            roadmap_id,
        )
    counts: dict[str, int] = {}
    for concept in concepts:
        counts[concept["status"]] = counts.get(concept["status"], 0) + 1
    body = {
        **{k: _iso(v) for k, v in row.items()},
        "id": str(row["id"]),
        "concepts": [{**dict(c), "id": str(c["id"])} for c in concepts],
        "concept_status": counts,
    }
    return JSONResponse(body)


app = Starlette(
    routes=[
        Route("/api/v1/task-logs", task_logs),
        Route("/api/v1/roadmaps/{roadmap_id}", roadmap),
        Route("/health", lambda _request: JSONResponse({"status": "healthy"})),
    ],
    lifespan=lifespan,
)


@contextmanager
def bare_server(
    database_url: str, workers: int, *uvicorn_options: str, app: str = "devkit.bare_app:app"
) -> Iterator[str]:
    """This app (or ``app``: devkit.fastapi_app:app) under uvicorn on a free loopback port
    (``uvicorn_options`` appended); yields its base URL."""
    port = free_port()
    env = {**os.environ, "BARE_DATABASE_URL": database_url, "JWT_SECRET_KEY": JWT_SECRET}
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app,
             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--no-access-log",
             "--log-level", "warning", *uvicorn_options],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_answering(base, proc, Path(log.name))
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=20)
