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
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from celery.result import AsyncResult
from prometheus_client import REGISTRY

from app import sizing, topology
from app.config.settings import get_settings
from app.core.celery_app import celery_app
from tests.support.env import BACKEND
from tests.support.workers import Worker, client_pid, running_workers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("migrated_database")]
CONCURRENCY = 2
SERVICES = {s.queue: s.name for s in topology.WORKERS}


@pytest.fixture(scope="module")
def workers(migrated_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    with running_workers(tmp_path_factory.mktemp("celery"), CONCURRENCY) as started:
        yield started


def probe_task(queue: str):
    """The one probe task, sent to ``queue``: every worker registers it."""
    from app.tasks.probe import probe

    return probe.s().set(queue=queue)


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
    results = [probe_task(q).delay(hold_seconds=0.3) for q in SERVICES for _ in range(4 * CONCURRENCY)]
    peaks: dict[str, int] = {}
    owners: dict[str, set[int]] = {s: set() for s in SERVICES.values()}
    while not all(r.ready() for r in results):
        rows = await pg.fetch(
            "SELECT application_name, client_port FROM pg_stat_activity"
            " WHERE datname = $1 AND application_name LIKE 'test.celery_%'"
            " AND application_name NOT LIKE '%.langgraph'",  # checkpointer pools: not the probes' pools
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
        per_worker_cap = CONCURRENCY * sizing.pool_sizing(settings, service).max_connections
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
    from app import runtime
    from app.core.redis_client import get_sync_redis
    from app.messaging import task_events
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
        get_sync_redis().delete(task_events.pending_key(), task_events.flush_guard_key())
        runtime.current().shutdown()


def plain_worker(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``celery -A app.core.celery_app worker`` with whatever a Procfile or compose file might pass."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app.core.celery_app", "worker", "--loglevel=INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         f"--hostname=plain-{uuid.uuid4().hex[:6]}@%h", *args],
        cwd=BACKEND, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def wait_for_children(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        if " ready." in log.read_text(errors="replace"):
            time.sleep(0.5)  # let the pool finish forking
            return [c.pid for c in psutil.Process(proc.pid).children()]
        time.sleep(0.2)
    raise AssertionError(f"worker not ready:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "extra", "queue", "children"),
    [
        # the module docstring's command: children from CELERY_LOGS_CONCURRENCY, not one per CPU
        (["--queues=logs"], {"CELERY_LOGS_CONCURRENCY": "3"}, "logs", 3),
        # no --queues: SERVICE_TYPE names the service, and the worker consumes its queue only
        ([], {"SERVICE_TYPE": "celery_content", "CELERY_CONTENT_CONCURRENCY": "1"}, "content_generation", 1),
    ],
)
def test_a_plain_worker_runs_the_budgeted_children(
    tmp_path: Path, subprocess_env: dict[str, str], args: list[str], extra: dict[str, str], queue: str,
    children: int,
) -> None:  # fmt: skip
    log = tmp_path / "worker.log"
    proc = plain_worker(args, {**subprocess_env, **extra}, log)
    try:
        assert len(wait_for_children(proc, log)) == children
        banner = log.read_text(errors="replace")
        consumed = {q for q in topology.QUEUES if f".> {q} " in banner}
        assert consumed == {queue}, banner[-2000:]
    finally:
        stop(proc)


def test_an_unbudgeted_concurrency_flag_is_refused_in_strict_mode(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    env = {**subprocess_env, "CELERY_LOGS_CONCURRENCY": "2", "DB_BUDGET_ENFORCEMENT": "strict",
           "DB_CONNECTION_BUDGET": "400"}  # fmt: skip
    log = tmp_path / "worker.log"
    proc = plain_worker(["--queues=logs", "--concurrency=5"], env, log)
    try:
        assert proc.wait(timeout=60) != 0
    finally:
        stop(proc)
    text = log.read_text(errors="replace")
    assert "--concurrency=5 differs from CELERY_LOGS_CONCURRENCY=2" in text
    # several queues at once belong to no service's budget
    proc = plain_worker(["--queues=logs,content_generation"], subprocess_env, log)
    try:
        assert proc.wait(timeout=60) != 0
    finally:
        stop(proc)
    assert "a worker serves exactly one queue" in log.read_text(errors="replace")
