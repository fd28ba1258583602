"""Faults: PostgreSQL restarted under load, every connection terminated (Redis outages: test_outages.py).

The restart and the Redis outage happen to private servers (scripts/own_services.py), never to the
machine's shared ones.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import structlog
from own_services import BACKEND, OwnPostgres, free_port, running_api

from tests.workers import start_worker, wait_ready

pytestmark = pytest.mark.slow


async def test_terminated_connections_recover_through_pre_ping(
    client: httpx.AsyncClient, pg: asyncpg.Connection, test_db_name: str
) -> None:
    assert all(
        r.status_code == 200
        for r in await asyncio.gather(*(client.get("/api/v1/roadmaps") for _ in range(3)))
    )
    killed = await pg.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = $1 AND application_name = 'test.api'",
        test_db_name,
    )
    assert killed >= 1
    # Every pooled connection is dead; pre-ping notices at checkout and reconnects: no error at all.
    sequential = [await client.get("/api/v1/roadmaps") for _ in range(5)]
    concurrent = await asyncio.gather(*(client.get("/api/v1/roadmaps") for _ in range(3)))
    assert [r.status_code for r in [*sequential, *concurrent]] == [200] * 8


async def test_connections_killed_while_idle_are_replaced_before_use(
    client: httpx.AsyncClient, pg: asyncpg.Connection, test_db_name: str
) -> None:
    """Idle longer than DB_POOL_PING_IDLE_SECONDS: the checkout's ping finds them dead (no retry)."""
    assert (await client.get("/api/v1/task-logs", params={"limit": 5})).status_code == 200
    killed = await pg.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = $1 AND application_name = 'test.api'",
        test_db_name,
    )
    assert killed >= 1
    await asyncio.sleep(0.7)  # past the 0.5 s bypass window
    with structlog.testing.capture_logs() as logs:
        responses = [await client.get("/api/v1/task-logs", params={"limit": 5}) for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 3
    assert not [e for e in logs if e["event"] == "db_read_retried_on_fresh_connection"]


async def count_topic(url: str, topic: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM roadmaps WHERE topic = $1", topic)
    finally:
        await conn.close()


@pytest.fixture
def own_postgres(subprocess_env: dict[str, str]) -> Iterator[OwnPostgres]:
    pg = OwnPostgres(max_connections=100).start()
    try:
        pg.create_database("app")
        subprocess.run(
            [sys.executable, "-m", "app.db.prestart", "--wait", "10"],
            cwd=BACKEND, env={**subprocess_env, "DATABASE_URL": pg.url("app")}, check=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        yield pg
    finally:
        pg.stop()


def test_postgres_restart_under_load(
    own_postgres: OwnPostgres, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    from app.tasks.content_generation_tasks import probe

    env = {**subprocess_env, "DATABASE_URL": own_postgres.url("app"), "DB_POOL_TIMEOUT": "2"}
    worker = start_worker("content_generation", 2, env, tmp_path)
    results: list[tuple[float, float, int]] = []  # (started, finished, status)
    errors: list[str] = []
    try:
        wait_ready([worker])
        with running_api(env, free_port(), workers=2) as base:
            stop = threading.Event()

            def load() -> None:
                with httpx.Client(base_url=base, timeout=10) as http:
                    while not stop.is_set():
                        started = time.monotonic()
                        try:
                            status = http.get("/api/v1/roadmaps").status_code
                        except httpx.HTTPError as exc:
                            errors.append(f"{type(exc).__name__} after {time.monotonic() - started:.1f} s")
                            status = 0  # no HTTP answer at all: as bad as a 500
                        results.append((started, time.monotonic(), status))

            threads = [threading.Thread(target=load) for _ in range(6)]
            for thread in threads:
                thread.start()
            time.sleep(1.5)
            tasks = [probe.delay(hold_seconds=1.0) for _ in range(6)]  # in flight during the restart
            time.sleep(0.3)
            restarted_at = time.monotonic()
            own_postgres.restart()
            back_at = time.monotonic()
            time.sleep(4)
            stop.set()
            for thread in threads:
                thread.join()
        statuses = {status for _, _, status in results}
        assert 500 not in statuses and statuses <= {200, 503}, (statuses, errors[:5])
        assert {s for start, _, s in results if start < restarted_at - 0.5} == {200}
        # Recovered within seconds: every request that started 2 s after the server was back succeeded.
        late = [s for start, _, s in results if start > back_at + 2]
        assert late and set(late) == {200}, [
            (round(a - back_at, 2), round(b - back_at, 2), s) for a, b, s in results if b > back_at - 1
        ]
        # No task lost: the probes cut off by the restart were retried and completed.
        assert all(task.get(timeout=60)["service"] == "celery_content" for task in tasks)
    finally:
        worker.stop()
