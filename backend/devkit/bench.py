"""What the benchmarks share: a throw-away migrated database, a real uvicorn server on it, and tokens it
accepts.

Loopback only; every process and database it creates is removed on exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from devkit.api import BACKEND, running_api
from devkit.ports import free_port
from devkit.postgres import execute

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
# Every read needs a token (task logs an admin's): the servers sign with this key, the clients with it.
JWT_SECRET = "bench-server-secret-" + "x" * 32


def bench_token(
    subject: str = "bench",
    role: str = "admin",
    *,
    secret: str = JWT_SECRET,
    expires_minutes: int | None = None,
) -> str:
    """A bearer token signed with ``secret`` (the servers started here run with JWT_SECRET)."""
    from app.config.settings import Settings
    from app.core.security import create_token

    settings = Settings.from_mapping({"JWT_SECRET_KEY": secret})
    return create_token(subject, role, settings=settings, expires_minutes=expires_minutes)  # type: ignore[arg-type]


def bench_headers(role: str = "admin", subject: str = "bench") -> dict[str, str]:
    """A bearer token the benchmark servers accept."""
    return {"Authorization": f"Bearer {bench_token(subject, role)}"}


@contextmanager
def bench_database() -> Iterator[str]:
    """Yields the URL of a new, migrated database; drops it afterwards."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    execute(ADMIN_URL, f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    try:
        subprocess.run(
            [sys.executable, "-m", "app.db.prestart", "--wait", "10"],
            cwd=BACKEND,
            env={**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        yield url
    finally:
        execute(ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def api_server(database_url: str, workers: int = 1, **env: str) -> Iterator[str]:
    """The API as production starts it (its server and HTTP protocol) on a free loopback port; yields its
    base URL."""
    with tempfile.TemporaryDirectory(prefix="prom-") as prom:
        full_env = {
            **os.environ,
            "ENVIRONMENT": "production",
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "LOG_LEVEL": "WARNING",
            "PROMETHEUS_MULTIPROC_DIR": prom,
            "JWT_SECRET_KEY": JWT_SECRET,
            # The benchmarks measure the pool and the request path; wrk retries a shed request at once,
            # so admission control would count in their figures as fast 503s. bench_overload turns it on.
            "API_ADMISSION": "off",
            **env,
        }
        with running_api(full_env, free_port(), workers=workers, production=True) as base:
            yield base


def use_in_this_process(database_url: str) -> None:
    """Point this process's settings at the benchmark database (for in-process benchmarks)."""
    os.environ.update(
        DATABASE_URL=database_url,
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=f"bench-{uuid.uuid4().hex[:8]}:",
        LOG_LEVEL="WARNING",
        ENVIRONMENT="production",
    )


# The owner of the seeded roadmap: its bench token reads it.
OWNER = "bench-owner"


async def seed_reads(url: str) -> str:
    """What the read benchmarks read: 1,000 task events and a roadmap of 30 concepts (its id)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO task_logs (task_id, task_name, queue, event, level, payload)"
            " VALUES ($1, $2, 'logs', 'task_succeeded', 'info', $3::jsonb)",
            [(str(uuid.uuid4()), "app.tasks.bench", json.dumps({"n": i, "runtime_seconds": 0.1}))
             for i in range(1000)],
        )  # fmt: skip
        roadmap_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO roadmaps (id, topic, status, requested_concepts, owner)"
            " VALUES ($1, 'Connection pooling', 'completed', 30, $2)",
            roadmap_id, OWNER,
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO concepts (id, roadmap_id, position, title, status, attempts, content)"
            " VALUES ($1, $2, $3, $4, 'completed', 1, $5)",
            [(uuid.uuid4(), roadmap_id, i, f"Concept #{i}", f"Content of concept {i}. " * 40)
             for i in range(30)],
        )  # fmt: skip
        return str(roadmap_id)
    finally:
        await conn.close()
