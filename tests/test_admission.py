"""Admission control (app.api.admission): the gradient limit's arithmetic, and the middleware on the
real app and database: a request above the limit is refused at once with 503 overloaded and Retry-After,
while /health and the admin routes are never shed."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest

from app.api.admission import GradientLimit
from tests.support.auth import auth
from tests.support.metrics_text import sample


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def windows(limit: GradientLimit, clock: Clock, rtt: float, count: int, in_flight: int | None = None) -> None:
    """``count`` windows of requests taking ``rtt`` each, at the limit's own concurrency by default."""
    for _ in range(count):
        for _ in range(limit.window_samples):
            limit.sample(rtt, in_flight if in_flight is not None else limit.admitted)
        clock.now += limit.window_seconds


def test_grows_to_the_ceiling_while_latency_stays_at_its_unloaded_level() -> None:
    clock = Clock()
    limit = GradientLimit(ceiling=10, clock=clock, probe_seconds=1e9)
    start = limit.admitted
    windows(limit, clock, 0.005, 200)
    assert start < 10 and limit.admitted == 10


def test_shrinks_when_latency_rises_past_the_tolerance() -> None:
    clock = Clock()
    limit = GradientLimit(ceiling=20, tolerance=1.5, clock=clock, probe_seconds=1e9)
    windows(limit, clock, 0.005, 200)
    assert limit.admitted == 20
    windows(limit, clock, 0.030, 100)  # queueing: six times the unloaded latency
    assert limit.admitted <= 3
    assert limit.admitted >= limit.floor


def test_does_not_grow_when_the_load_and_not_the_limit_kept_concurrency_low() -> None:
    clock = Clock()
    limit = GradientLimit(ceiling=10, clock=clock, probe_seconds=1e9)
    start = limit.admitted
    windows(limit, clock, 0.005, 100, in_flight=0)
    assert limit.admitted == start


def test_a_database_failure_cuts_the_limit_whatever_the_latency() -> None:
    clock = Clock()
    limit = GradientLimit(ceiling=10, clock=clock, probe_seconds=1e9)
    windows(limit, clock, 0.005, 200)
    before = limit.limit
    for _ in range(limit.window_samples):
        limit.sample(0.001, 10, dropped=True)
    clock.now += limit.window_seconds
    limit.sample(0.001, 10)
    # The latency alone would have kept it at the ceiling.
    assert before == 10 and limit.limit <= before * 0.9 + 1e-9


def test_the_probe_forgets_the_baseline_so_a_slower_one_is_learnt() -> None:
    """After a lasting rise of the baseline (a slower plan) the limit recovers instead of staying down."""
    clock = Clock()
    limit = GradientLimit(ceiling=16, clock=clock, probe_seconds=5)
    windows(limit, clock, 0.002, 60)
    # Now every request takes 10 ms whatever the concurrency: nothing queues, the work got slower.
    windows(limit, clock, 0.010, 20)
    low = limit.admitted
    windows(limit, clock, 0.010, 400)  # 20 s: several probes
    assert low < 16 and limit.admitted == 16


@pytest.fixture
def static_admission(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test pool holds 3: a static limit admits two requests per process and leaves one connection
    # to the routes that are never shed.
    monkeypatch.setenv("API_ADMISSION", "static")


async def test_above_the_limit_a_request_is_refused_at_once_and_health_and_admin_still_answer(
    static_admission: None, migrated_database: str, test_db: asyncpg.Connection
) -> None:
    from app.main import create_app

    app = create_app()
    headers = auth("admin")
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=20) as http,
        app.router.lifespan_context(app),
    ):
        await test_db.execute("BEGIN; LOCK TABLE task_logs IN ACCESS EXCLUSIVE MODE")
        held = [asyncio.create_task(http.get("/api/v1/task-logs?limit=1", headers=headers)) for _ in range(2)]
        try:
            while app.middleware_stack is None or _admission(app).in_flight < 2:
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            refused = await http.get("/api/v1/task-logs?limit=1", headers=headers)
            elapsed = time.perf_counter() - started
            assert refused.status_code == 503, refused.text
            assert refused.json()["reason"] == "overloaded"
            assert int(refused.headers["retry-after"]) >= 1
            assert elapsed < 0.05
            # Never shed: an operator must see an overloaded service.
            assert (await http.get("/health")).status_code == 200
            admin = await http.get("/api/v1/admin/tavily-keys", headers=headers)
            assert admin.status_code == 200, admin.text
        finally:
            await test_db.execute("COMMIT")
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        after = await http.get("/api/v1/task-logs?limit=1", headers=headers)
        assert after.status_code == 200
        text = (await http.get("/metrics")).text
    assert sample(text, "api_admission_rejected_total", service="api") >= 1
    assert sample(text, "http_requests_total", method="GET", route="/api/v1/task-logs", status="503") >= 1


def _admission(app: object) -> object:
    from app.api.admission import AdmissionControl

    layer = app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, AdmissionControl):
        layer = layer.app
    return layer
