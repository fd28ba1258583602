"""A stalled database: every request, statement and checkpointer call has a deadline, and the pools heal.

The stall is real: a TCP proxy (tests/support/fault_proxy.py) in front of the real PostgreSQL stops
passing bytes while keeping every connection open, which is what a hung server or a black-holed network
looks like to a client. Before these deadlines, 2 of 4 ``GET /roadmaps/{id}`` hung until the client gave
up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import psycopg
import pytest
from sqlalchemy import exc, text

from app.config import connections
from app.config.settings import get_settings
from app.core.checkpointer_saver import CheckpointerTimeout
from app.core.orchestrator_factory import OrchestratorFactory, checkpointer_stats
from app.db.engine import build_unpooled_engine, engine_options, get_engine, pool_snapshot
from app.db.errors import is_database_timeout, is_database_unavailable
from app.db.reader import driver_statement
from app.db.session import read
from devkit.api import running_api
from devkit.ports import free_port
from tests.support.auth import auth
from tests.support.env import BASE_ENV
from tests.support.fault_proxy import FaultProxy, through
from tests.support.workers import start_worker, wait_ready

pytestmark = pytest.mark.usefixtures("migrated_database")


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deadlines of about a second, so that the tests measure them without waiting long."""
    for name, value in {
        "DB_CONNECT_TIMEOUT": "1",
        "DB_STATEMENT_TIMEOUT": "1",
        "DB_COMMAND_TIMEOUT_MARGIN": "0.5",
        "LANGGRAPH_POOL_TIMEOUT": "1",
        "REQUEST_TIMEOUT_SECONDS": "3",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


# --- what every connection starts with ----------------------------------------------------------------


async def test_connections_carry_the_server_side_deadlines(test_db_name: str) -> None:
    settings = get_settings()
    shown = "SELECT current_setting($1)"

    async def session_settings(conn: asyncpg.Connection) -> dict[str, str]:
        names = ["statement_timeout", "idle_in_transaction_session_timeout", "tcp_keepalives_idle"]
        return {name: await conn.fetchval(shown, name) for name in names}

    async with get_engine().connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        api = await session_settings(raw)
        assert raw._config.command_timeout == connections.command_timeout(settings, "api") == 11.0
    assert api == {
        "statement_timeout": "10s",
        "idle_in_transaction_session_timeout": "1min",
        # Over TCP the server applies it; a Unix-socket connection would show 0.
        "tcp_keepalives_idle": "30",
    }

    migrate_engine = build_unpooled_engine(engine_options(settings, "migrate"))
    try:
        async with migrate_engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            migrate = await session_settings(raw)
            assert raw._config.command_timeout is None
    finally:
        await migrate_engine.dispose()
    # A migration may run for minutes: no statement deadline on either side.
    assert migrate["statement_timeout"] == "0" and migrate["idle_in_transaction_session_timeout"] == "0"

    factory = await OrchestratorFactory(get_settings(), "celery_workflow").open()
    async with factory.pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT current_setting('statement_timeout') AS st,"
                " current_setting('idle_in_transaction_session_timeout') AS it"
            )
        ).fetchone()
        assert row == {"st": "10s", "it": "1min"}
        assert "keepalives=1" in conn.info.dsn and "keepalives_idle=30" in conn.info.dsn
    await factory.close()


async def test_statement_timeout_is_a_clean_server_side_cancel(short_deadlines: None) -> None:
    """The server cancels at statement_timeout (1 s) before the client's deadline (1.5 s): a 57014 on a
    connection that stays usable, classified as a database timeout."""
    started = time.perf_counter()
    with pytest.raises(exc.DBAPIError) as caught:
        await read(lambda db: db.value(driver_statement(text("SELECT pg_sleep(3)")), {}))
    elapsed = time.perf_counter() - started
    assert 0.9 < elapsed < 1.5, elapsed
    assert is_database_unavailable(caught.value) and is_database_timeout(caught.value)
    assert not caught.value.connection_invalidated
    assert await read(lambda db: db.value(driver_statement(text("SELECT 1")), {})) == 1
    assert pool_snapshot().checked_out == 0


# --- a stalled server ---------------------------------------------------------------------------------------


async def test_a_command_timeout_discards_its_connection(
    proxy: FaultProxy, short_deadlines: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client deadline (statement_timeout + margin = 1.5 s) fires when the server never answers,
    and the connection, mid-protocol, is closed rather than pooled: after the stall, it works again."""
    monkeypatch.setenv("DATABASE_URL", through(proxy))
    monkeypatch.setenv("DB_POOL_PING_IDLE_SECONDS", "60")  # the statement, not the idle ping, meets the stall
    get_settings.cache_clear()
    pool = get_engine().sync_engine.pool
    async with get_engine().connect() as conn:
        stalled = (await conn.get_raw_connection()).driver_connection
        before = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()

    proxy.stall()
    started = time.perf_counter()
    with pytest.raises(TimeoutError) as caught:
        await read(lambda db: db.value(driver_statement(text("SELECT 2")), {}))
    elapsed = time.perf_counter() - started
    assert 1.4 < elapsed < 1.9, elapsed  # no graceful close waiting on the stalled server afterwards
    assert is_database_unavailable(caught.value) and is_database_timeout(caught.value)
    assert pool.checkedout() == 0
    assert stalled.is_closed()  # discarded, not pooled in an unknown state

    proxy.restore()
    after = await read(lambda db: db.value(driver_statement(text("SELECT pg_backend_pid()")), {}))
    assert after != before  # a fresh connection, and no "another operation is in progress"
    assert pool.checkedout() == 0


@pytest.mark.slow
def test_stalled_database_answers_503_within_the_deadline_and_heals(
    proxy: FaultProxy, subprocess_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    deadline = 3.0
    env = {
        **subprocess_env,
        "DATABASE_URL": through(proxy),
        "DB_CONNECT_TIMEOUT": "1",
        "DB_STATEMENT_TIMEOUT": "1",
        "DB_COMMAND_TIMEOUT_MARGIN": "0.5",
        "REQUEST_TIMEOUT_SECONDS": str(deadline),
        # 6 connections: each of the 6 concurrent requests below has its own, none waits on the pool.
        "DB_POOL_SIZE": "6",
        "DB_MAX_OVERFLOW": "0",
    }
    with (
        running_api(env, free_port()) as base,
        httpx.Client(base_url=base, timeout=30, headers=auth()) as http,
    ):
        created = http.post("/api/v1/roadmaps", json={"topic": "stalls"})
        assert created.status_code == 202, created.text
        path = f"/api/v1/roadmaps/{created.json()['id']}"

        def timed_get(url: str) -> tuple[float, httpx.Response]:
            started = time.perf_counter()
            response = http.get(url)
            return time.perf_counter() - started, response

        with concurrent.futures.ThreadPoolExecutor(8) as threads:
            warm = list(threads.map(timed_get, [path] * 4))
            assert [r.status_code for _, r in warm] == [200] * 4

            proxy.stall()
            stalled = list(threads.map(timed_get, [path] * 4 + ["/api/v1/roadmaps"] * 2))
            health_elapsed, health = timed_get("/health")
            proxy.restore()

            latencies = sorted(round(t, 2) for t, _ in stalled)
            print(
                f"stalled: 503 after {latencies} s; /health {health.status_code} after {health_elapsed:.2f} s"
            )
            for elapsed, response in stalled:
                assert response.status_code == 503, response.text
                assert response.json()["reason"] in {"database_timeout", "request_timeout"}, response.text
                assert response.headers["Retry-After"] == str(get_settings().RETRY_AFTER_SECONDS)
                assert elapsed < 2 * deadline
            assert health.status_code == 503 and health_elapsed < 2.0

            # Healed: within a few seconds every request succeeds, and nothing stayed checked out.
            until = time.monotonic() + 10
            while (status := timed_get(path)[1].status_code) != 200 and time.monotonic() < until:
                time.sleep(0.2)
            assert status == 200
            after = list(threads.map(timed_get, [path] * 8))
            assert [r.status_code for _, r in after] == [200] * 8
        pool = http.get("/health").json()["database"]["pool"]
        assert pool["checked_out"] == 0, pool
    # Every connection the stall cut off is gone from the server, too.
    left = asyncio.run(_connections_named("test.api", BASE_ENV["DATABASE_URL"]))
    assert left == 0, left


@pytest.mark.slow
def test_health_answers_within_2s_every_time_under_a_stall(
    proxy: FaultProxy, subprocess_env: dict[str, str]
) -> None:
    """A load balancer's probe allows /health 2 s. Under a stall the database check cannot finish; the
    handler's own deadline (HEALTH_CHECK_TIMEOUT) must hold for the whole answer, every call, with the
    production deadlines (before: 1.7-2.3 s over 20 calls, the cancelled probe's cleanup awaited)."""
    # The production pool and deadlines (the suite's are shorter): a 10-connection pool, warm.
    env = {**subprocess_env, "DATABASE_URL": through(proxy), "DB_POOL_SIZE": "10", "DB_MAX_OVERFLOW": "0"}
    for name in ("DB_POOL_TIMEOUT", "DB_CONNECT_TIMEOUT", "DB_STATEMENT_TIMEOUT"):
        env.pop(name, None)
    with (
        running_api(env, free_port()) as base,
        httpx.Client(base_url=base, timeout=30) as http,
        concurrent.futures.ThreadPoolExecutor(10) as threads,
    ):
        assert set(threads.map(lambda _: http.get("/health").status_code, range(30))) == {200}
        proxy.stall()
        calls: list[tuple[float, httpx.Response]] = []
        for i in range(20):
            started = time.perf_counter()
            response = http.get("/health")
            calls.append((time.perf_counter() - started, response))
            time.sleep(0.2 * (i % 3))  # probes at varying phases of the probe left running
        proxy.restore()
        latencies = [round(t, 3) for t, _ in calls]
        print(f"/health under a stall: {latencies} s, max {max(latencies)}")
        for _, response in calls:
            assert response.status_code == 503, response.text
            assert response.json()["database"]["error"] == "timeout", response.text
        # Some answer sooner: the probe they share failed on its own deadline (connect, idle ping).
        assert max(latencies) <= 2.0, latencies
        # Healed: the probe left running ends once bytes flow, and the next one answers.
        until = time.monotonic() + 20
        while (status := http.get("/health").status_code) != 200 and time.monotonic() < until:
            time.sleep(0.2)
        assert status == 200
        # One probe at a time: the stall cost /health at most one connection, not one per call (the
        # snapshot may be taken while this call's own probe holds one).
        assert http.get("/health").json()["database"]["pool"]["checked_out"] <= 1


@pytest.mark.parametrize("stalled_in", ["idle ping", "statement"])
async def test_the_request_deadline_cancels_cleanly(
    proxy: FaultProxy, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, stalled_in: str
) -> None:
    """The backstop: database deadlines longer than the request's, so the request's fires first and
    cancels the handler wherever it waits (in the checkout's idle ping, in a statement). The client gets
    503 request_timeout on time, and the cancelled checkout comes back to the pool."""
    deadline = 2.0
    monkeypatch.setenv("DATABASE_URL", through(proxy))
    monkeypatch.setenv("REQUEST_TIMEOUT_SECONDS", str(deadline))
    monkeypatch.setenv("DB_CONNECT_TIMEOUT", "10")
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT", "10")
    monkeypatch.setenv("DB_POOL_PING_IDLE_SECONDS", "0.2" if stalled_in == "idle ping" else "60")
    get_settings.cache_clear()
    assert (await client.get("/api/v1/roadmaps", headers=auth())).status_code == 200
    await asyncio.sleep(0.3)  # idle past the ping threshold (when it is 0.2 s)

    proxy.stall()
    started = time.perf_counter()
    response = await client.get("/api/v1/roadmaps", headers=auth())
    elapsed = time.perf_counter() - started
    proxy.restore()
    assert response.status_code == 503, response.text
    assert response.json()["reason"] == "request_timeout"
    assert "Retry-After" in response.headers
    assert deadline <= elapsed < deadline + 0.5, elapsed
    assert pool_snapshot().checked_out == 0

    until = time.monotonic() + 10
    reader = auth()
    while (
        status := (await client.get("/api/v1/roadmaps", headers=reader)).status_code
    ) != 200 and time.monotonic() < until:
        await asyncio.sleep(0.2)
    assert status == 200
    assert pool_snapshot().checked_out == 0


async def _connections_named(name: str, url: str) -> int:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        for _ in range(50):
            count = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = $1",
                name,
            )
            if count == 0:
                return 0
            await asyncio.sleep(0.1)
        return int(count)
    finally:
        await conn.close()


async def test_a_stalled_checkpointer_call_fails_within_its_deadline(
    proxy: FaultProxy, short_deadlines: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.workflows.roadmap_graph import compiled_graph, thread_config

    monkeypatch.setenv("DATABASE_URL", through(proxy))
    get_settings.cache_clear()
    settings = get_settings()
    deadline = connections.checkpointer_operation_timeout(settings, "celery_workflow")
    assert deadline == 2.5  # LANGGRAPH_POOL_TIMEOUT 1 + statement_timeout 1 + margin 0.5
    graph = await compiled_graph()
    config = thread_config(str(uuid.uuid4()))
    assert (await graph.aget_state(config)).values == {}

    proxy.stall()
    started = time.perf_counter()
    with pytest.raises(Exception) as caught:  # which one: where the stall met it
        await graph.aget_state(config)
    elapsed = time.perf_counter() - started
    proxy.restore()
    print(f"checkpointer: {type(caught.value).__name__} after {elapsed:.2f} s")
    assert elapsed < deadline + 0.5, elapsed
    assert is_database_unavailable(caught.value), repr(caught.value)

    # Healed: the pool replaces what the stall broke, and lends nothing out afterwards.
    until = time.monotonic() + 15
    while True:
        try:
            assert (await graph.aget_state(config)).values == {}
            break
        except Exception:
            if time.monotonic() > until:
                raise
            await asyncio.sleep(0.2)
    until = time.monotonic() + 15
    while checkpointer_stats().in_use and time.monotonic() < until:
        await asyncio.sleep(0.2)
    assert checkpointer_stats().in_use == 0


async def test_a_checkpointer_statement_that_gets_no_answer_fails_on_time(proxy: FaultProxy) -> None:
    """Past the pool's check: a saver call whose statement meets the stall. psycopg has no statement
    deadline of its own; the saver's answers at its deadline, not after psycopg's cancel attempts."""
    from psycopg.rows import dict_row

    from app.config.connections import libpq_params
    from app.core.checkpointer_saver import BoundedPostgresSaver

    settings = get_settings()
    conn = await psycopg.AsyncConnection.connect(
        through(proxy), autocommit=True, row_factory=dict_row, **libpq_params(settings, "test")
    )
    try:
        saver = BoundedPostgresSaver(conn)  # type: ignore[arg-type]
        saver.deadline = 1.0
        config = {"configurable": {"thread_id": str(uuid.uuid4()), "checkpoint_ns": ""}}
        assert await saver.aget_tuple(config) is None  # type: ignore[arg-type]

        proxy.stall()
        started = time.perf_counter()
        with pytest.raises(CheckpointerTimeout) as caught:
            await saver.aget_tuple(config)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        proxy.restore()
        assert 1.0 <= elapsed < 1.3, elapsed
        assert is_database_unavailable(caught.value) and is_database_timeout(caught.value)
    finally:
        await conn.close()


@pytest.mark.slow
def test_a_task_meeting_a_stalled_database_is_retried_to_completion(
    proxy: FaultProxy, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """The task's statement fails at the client deadline (1.5 s) instead of hanging its worker child, the
    timeout counts as "database unavailable", and DatabaseTask retries until the database answers."""
    from app.tasks.probe import probe

    probe = probe.s().set(queue="content_generation")
    env = {
        **subprocess_env,
        "DATABASE_URL": through(proxy),
        "DB_CONNECT_TIMEOUT": "1",
        "DB_STATEMENT_TIMEOUT": "1",
        "DB_COMMAND_TIMEOUT_MARGIN": "0.5",
    }
    worker = start_worker("content_generation", 1, env, tmp_path)
    try:
        wait_ready([worker])
        assert probe.delay().get(timeout=30)["service"] == "celery_content"
        proxy.stall()
        stalled_at = time.monotonic()
        task = probe.delay()
        until = stalled_at + 15
        while "task_database_unavailable_retrying" not in worker.log() and time.monotonic() < until:
            time.sleep(0.1)
        first_retry = time.monotonic() - stalled_at
        proxy.restore()
        print(f"task: first retry scheduled {first_retry:.2f} s after the stall")
        assert first_retry < 4, worker.log()[-3000:]
        assert task.get(timeout=60)["service"] == "celery_content"
        assert "TimeoutError" in worker.log()
    finally:
        worker.stop()
