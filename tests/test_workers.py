"""Three real Celery workers (prefork) on the real Redis and PostgreSQL.

* each queue is consumed by its own worker only, under its own application_name;
* a burst keeps each worker's server connections within concurrency x (pool_size + max_overflow),
  and the prefork parent holds none;
* kill -9 of a child mid-task: the task is redelivered and completes once;
* task events reach task_logs through the logs queue, one connection per batch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from celery.result import AsyncResult
from prometheus_client import REGISTRY

from app.config.settings import get_settings
from app.core.celery_app import celery_app
from tests.workers import Worker, client_pid, running_workers

pytestmark = pytest.mark.slow
CONCURRENCY = 2
SERVICES = {
    "logs": "celery_logs",
    "content_generation": "celery_content",
    "roadmap_workflow": "celery_workflow",
}


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    with running_workers(tmp_path_factory.mktemp("celery"), CONCURRENCY) as started:
        yield started


def probe_task(queue: str):
    from app.tasks import content_generation_tasks, logs_tasks, roadmap_workflow_tasks

    return {
        "logs": logs_tasks.probe,
        "content_generation": content_generation_tasks.probe,
        "roadmap_workflow": roadmap_workflow_tasks.probe,
    }[queue]


async def wait_for_rows(
    pg: asyncpg.Connection, sql: str, *args: object, want: int, timeout: float = 20
) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = await pg.fetchval(sql, *args)
        if count >= want or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


def test_each_queue_is_consumed_by_its_own_worker(workers: dict[str, Worker]) -> None:
    for queue, service in SERVICES.items():
        results = [probe_task(queue).delay() for _ in range(4)]
        for result in results:
            info = result.get(timeout=30)
            assert info["service"] == service
            assert info["application_name"] == f"test.{service}"
            assert info["parent_pid"] == workers[queue].pid
            assert info["pid"] in workers[queue].children()


async def test_burst_stays_within_budget_and_parent_holds_none(
    workers: dict[str, Worker], pg: asyncpg.Connection, test_db_name: str
) -> None:
    settings = get_settings()
    per_worker_cap = CONCURRENCY * settings.db_pool_max_connections
    results = [probe_task(q).delay(hold_seconds=0.3) for q in SERVICES for _ in range(4 * CONCURRENCY)]
    peaks: dict[str, int] = {}
    owners: dict[str, set[int]] = {s: set() for s in SERVICES.values()}
    while not all(r.ready() for r in results):
        rows = await pg.fetch(
            "SELECT application_name, client_port FROM pg_stat_activity"
            " WHERE datname = $1 AND application_name LIKE 'test.celery_%'",
            test_db_name,
        )
        counts: dict[str, int] = {}
        for row in rows:
            service = row["application_name"].removeprefix("test.")
            counts[service] = counts.get(service, 0) + 1
            pid = client_pid(row["client_port"])
            if pid:
                owners[service].add(pid)
        for service, count in counts.items():
            peaks[service] = max(peaks.get(service, 0), count)
        await asyncio.sleep(0.05)
    for result in results:
        result.get(timeout=30)
    for queue, service in SERVICES.items():
        assert 1 <= peaks.get(service, 0) <= per_worker_cap, (service, peaks)
        assert owners[service], service
        assert workers[queue].pid not in owners[service]  # the prefork parent holds no connection
        assert owners[service] <= set(workers[queue].children())


async def test_killed_child_task_is_redelivered_and_completes_once(
    workers: dict[str, Worker], test_db: asyncpg.Connection
) -> None:
    task = probe_task("content_generation").delay(sleep_seconds=2.0)
    deadline = time.monotonic() + 20
    while AsyncResult(task.id, app=celery_app).state != "STARTED" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    meta = AsyncResult(task.id, app=celery_app).info
    assert AsyncResult(task.id, app=celery_app).state == "STARTED"
    victim = meta["pid"]
    assert victim in workers["content_generation"].children()
    os.kill(victim, signal.SIGKILL)

    info = task.get(timeout=60)
    assert info["pid"] != victim
    events = "SELECT count(*) FROM task_logs WHERE task_id = $1 AND event = $2"
    assert await wait_for_rows(test_db, events, task.id, "task_started", want=2) == 2
    assert await wait_for_rows(test_db, events, task.id, "task_succeeded", want=1) == 1
    await asyncio.sleep(1.0)  # a duplicate completion would have arrived by now
    assert await test_db.fetchval(events, task.id, "task_succeeded") == 1
    assert len(workers["content_generation"].children()) == CONCURRENCY  # the pool replaced the child


def test_task_events_are_written_one_connection_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in this process (no worker), to count checkouts exactly: 120 events, batches of 50 -> 3."""
    from app.core import async_runner
    from app.core.redis_client import get_sync_redis
    from app.db.engine import dispose_engine
    from app.tasks import task_events
    from app.tasks.logs_tasks import flush_task_events

    monkeypatch.setenv("TASK_LOG_BATCH_SIZE", "50")
    monkeypatch.setenv("REDIS_KEY_PREFIX", f"batch-{uuid.uuid4().hex[:8]}:")
    monkeypatch.setenv("TASK_LOG_FLUSH_INTERVAL", "300")  # no flush task gets queued for this prefix
    get_settings.cache_clear()
    name = f"test.batch.{uuid.uuid4().hex[:8]}"
    try:
        for i in range(120):
            task_events.emit("line", task_name=name, task_id=str(i), n=i)
        assert task_events.pending_count() == 120
        label = {"service": "api"}
        before = REGISTRY.get_sample_value("db_connection_hold_seconds_count", label) or 0
        assert flush_task_events.run() == 120
        assert REGISTRY.get_sample_value("db_connection_hold_seconds_count", label) - before == 3
        assert task_events.pending_count() == 0
        assert flush_task_events.run() == 0
    finally:
        async_runner.run(dispose_engine())
        async_runner.stop_process_loop()
        get_sync_redis().delete(task_events.pending_key(), task_events.flush_guard_key())
