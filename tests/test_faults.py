"""Faults: PostgreSQL restarted under load, every connection terminated, Redis restarted with tasks in
flight (Redis stopped or stalled under POSTs, PostgreSQL cut mid-generation: test_outages.py).

The restart and the Redis outage happen to private servers (devkit.postgres, devkit.redis_server),
never to the machine's shared ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
import structlog
from celery import Celery
from celery.result import AsyncResult
from celery.states import READY_STATES

from devkit.api import running_api
from devkit.ports import free_port
from devkit.postgres import OwnPostgres
from devkit.redis_server import OwnRedis
from tests.support.auth import auth
from tests.support.workers import kill_quietly, start_worker, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("migrated_database")]


async def test_terminated_connections_recover_through_pre_ping(
    client: httpx.AsyncClient, pg: asyncpg.Connection, test_db_name: str
) -> None:
    assert all(
        r.status_code == 200
        for r in await asyncio.gather(*(client.get("/api/v1/roadmaps", headers=auth()) for _ in range(3)))
    )
    killed = await pg.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = $1 AND application_name = 'test.api'",
        test_db_name,
    )
    assert killed >= 1
    # Every pooled connection is dead; pre-ping notices at checkout and reconnects: no error at all.
    sequential = [await client.get("/api/v1/roadmaps", headers=auth()) for _ in range(5)]
    concurrent = await asyncio.gather(*(client.get("/api/v1/roadmaps", headers=auth()) for _ in range(3)))
    assert [r.status_code for r in [*sequential, *concurrent]] == [200] * 8


async def test_connections_killed_while_idle_are_replaced_before_use(
    client: httpx.AsyncClient, pg: asyncpg.Connection, test_db_name: str
) -> None:
    """Idle longer than DB_POOL_PING_IDLE_SECONDS: the checkout's ping finds them dead (no retry)."""
    admin = auth("admin")
    assert (await client.get("/api/v1/task-logs", params={"limit": 5}, headers=admin)).status_code == 200
    killed = await pg.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = $1 AND application_name = 'test.api'",
        test_db_name,
    )
    assert killed >= 1
    await asyncio.sleep(0.7)  # past the 0.5 s bypass window
    with structlog.testing.capture_logs() as logs:
        responses = [
            await client.get("/api/v1/task-logs", params={"limit": 5}, headers=admin) for _ in range(3)
        ]
    assert [r.status_code for r in responses] == [200] * 3
    assert not [e for e in logs if e["event"] == "db_read_retried_on_fresh_connection"]


async def count_topic(url: str, topic: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM roadmaps WHERE topic = $1", topic)
    finally:
        await conn.close()


# Admission control on too (production's default): the restart's 503s cut its limits, which must come back
# by themselves. A pool of 6 admits the six clients below (the ceiling is the pool less one, per worker).
ADMISSION = {"off": {}, "adaptive": {"API_ADMISSION": "adaptive", "DB_POOL_SIZE": "6"}}


@pytest.mark.parametrize("admission", ADMISSION)
def test_postgres_restart_under_load(
    own_postgres: OwnPostgres, subprocess_env: dict[str, str], tmp_path: Path, admission: str
) -> None:
    from app.tasks.probe import probe

    env = {
        **subprocess_env,
        "DATABASE_URL": own_postgres.url("app"),
        "DB_POOL_TIMEOUT": "2",
        **ADMISSION[admission],
    }
    headers = auth()
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
                            status = http.get("/api/v1/roadmaps", headers=headers).status_code
                        except httpx.HTTPError as exc:
                            errors.append(f"{type(exc).__name__} after {time.monotonic() - started:.1f} s")
                            status = 0  # no HTTP answer at all: as bad as a 500
                        results.append((started, time.monotonic(), status))

            threads = [threading.Thread(target=load) for _ in range(6)]
            for thread in threads:
                thread.start()
            time.sleep(1.5)
            content = probe.s(hold_seconds=1.0).set(queue="content_generation")
            tasks = [content.delay() for _ in range(6)]  # in flight during the restart
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


@pytest.fixture
def persistent_redis() -> Iterator[OwnRedis]:
    redis = OwnRedis(persistent=True).start()
    try:
        yield redis
    finally:
        redis.stop()


def _wait_for(app: Celery, task_id: str, states: frozenset[str], timeout: float) -> AsyncResult:
    """Poll the task's state (a GET): a waiting ``.get()`` would subscribe, and its unsubscribe at
    garbage collection would retry against a Redis the fixture already stopped."""
    deadline = time.monotonic() + timeout
    while (result := AsyncResult(task_id, app=app)).state not in states:
        assert time.monotonic() < deadline, (task_id, result.state)
        time.sleep(0.1)
    return result


def _outcome(app: Celery, task_id: str, timeout: float) -> dict[str, object]:
    result = _wait_for(app, task_id, READY_STATES, timeout)
    assert result.state == "SUCCESS", (result.state, result.result)
    return result.result


async def _events(url: str, ids: list[str]) -> dict[tuple[str, str], int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT task_id, event, count(*) AS n FROM task_logs WHERE task_id = ANY($1::text[])"
            " GROUP BY task_id, event",
            ids,
        )
    finally:
        await conn.close()
    return {(r["task_id"], r["event"]): r["n"] for r in rows}


def test_workers_survive_a_redis_restart(
    persistent_redis: OwnRedis, subprocess_env: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Redis restarted (SIGTERM, then started again on its port) while acks_late tasks run.

    The content worker has a free child, so it waits in BRPOP with unacknowledged messages: the case
    in which celery 5.7.0 died with AttributeError('NoneType' ... 'hostname'). It must survive and keep
    consuming, and its in-flight tasks must finish once. The workflow worker is killed during the
    outage (any crash): its in-flight task must be redelivered within the visibility timeout derived
    from the time limits plus kombu's 10 s sweep, not hours later.
    """
    from app import sizing
    from app.config.settings import get_settings
    from app.core.celery_app import create_celery
    from app.messaging.names import PROBE

    limits = {"CELERY_CONTENT_TIME_LIMIT": "10", "CELERY_WORKFLOW_TIME_LIMIT": "10"}
    env = {**subprocess_env, "REDIS_URL": persistent_redis.url, **limits}
    for key in ("REDIS_URL", *limits):
        monkeypatch.setenv(key, env[key])
    get_settings.cache_clear()
    visibility = sizing.celery_visibility_timeout(get_settings())
    assert visibility == 10 + 30 + 1  # the longest acks_late limit, the retry countdown, 10%
    app = create_celery(get_settings(), set_as_current=False)  # reads results
    sender = create_celery(get_settings(), set_as_current=False)
    sender.conf.result_backend = "disabled://"  # sends without subscribing to the results

    logs = start_worker("logs", 1, env, tmp_path)
    worker = start_worker("content_generation", 3, env, tmp_path)
    doomed = start_worker("roadmap_workflow", 1, env, tmp_path)
    replacement = None
    try:
        wait_ready([logs, worker, doomed])
        content, flow = {"queue": "content_generation"}, {"queue": "roadmap_workflow"}
        in_flight = [sender.send_task(PROBE, kwargs={"sleep_seconds": 5}, **content).id for _ in range(2)]
        orphan = sender.send_task(PROBE, kwargs={"sleep_seconds": 3}, **flow).id
        for task_id in [*in_flight, orphan]:
            _wait_for(app, task_id, frozenset({"STARTED"}), 30)

        persistent_redis.stop(remove=False)  # SIGTERM: the AOF is synced, clients are cut
        for pid in [*doomed.children(), doomed.pid]:
            kill_quietly(pid)  # a worker that dies in the outage cannot restore what it held
        killed_at = time.monotonic()
        time.sleep(1)
        persistent_redis.start()  # same port, same data

        assert all(_outcome(app, task_id, 30)["parent_pid"] == worker.pid for task_id in in_flight)
        assert worker.proc.poll() is None, worker.log()[-3000:]  # alive (5.7.0 died on reconnect)
        assert "Unrecoverable error" not in worker.log()
        after = sender.send_task(PROBE, **content).id  # and still consuming
        assert _outcome(app, after, 30)["service"] == "celery_content"

        (tmp_path / "again").mkdir()
        replacement = start_worker("roadmap_workflow", 1, env, tmp_path / "again")
        wait_ready([replacement])
        result = _outcome(app, orphan, visibility + 10 + 15)
        redelivered_after = time.monotonic() - killed_at
        print(f"orphan redelivered, done {redelivered_after:.1f} s after the kill (timeout {visibility} s)")
        assert result["parent_pid"] == replacement.pid
        # Not before the timeout (it was still running, as far as Redis knew), and not hours later.
        assert visibility - 5 < redelivered_after < visibility + 10 + 10, redelivered_after

        ids = [*in_flight, orphan]
        expected = {(i, "task_started"): 1 for i in in_flight} | {(orphan, "task_started"): 2}
        expected |= {(i, "task_succeeded"): 1 for i in ids}
        deadline = time.monotonic() + 15
        while (events := asyncio.run(_events(env["DATABASE_URL"], ids))) != expected:
            assert time.monotonic() < deadline, events
            time.sleep(0.3)
        # Nothing left unacknowledged or queued: every message was acknowledged exactly once.
        client = redis.Redis.from_url(persistent_redis.url)
        prefix = env["REDIS_KEY_PREFIX"]
        assert client.hlen(f"{prefix}unacked") == 0
        assert [client.llen(f"{prefix}{q}") for q in ("content_generation", "roadmap_workflow")] == [0, 0]
    finally:
        for started in (logs, worker, doomed, replacement):
            if started is not None:
                started.stop()
