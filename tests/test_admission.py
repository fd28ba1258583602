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


def windows(
    limit: GradientLimit,
    clock: Clock,
    rtt: float,
    count: int,
    in_flight: int | None = None,
    admitted_with: int | None = None,
) -> list[int]:
    """``count`` windows of requests taking ``rtt`` each, at the limit's own concurrency by default;
    the limit after each window."""
    seen = []
    for _ in range(count):
        for _ in range(limit.window_samples):
            busy = in_flight if in_flight is not None else limit.admitted
            limit.sample(rtt, busy, admitted_with=admitted_with if admitted_with is not None else busy)
        clock.now += limit.window_seconds
        seen.append(limit.admitted)
    return seen


def queueing(
    limit: GradientLimit, clock: Clock, count: int, service: float = 0.005, capacity: int = 4
) -> list[int]:
    """A saturated process that serves ``capacity`` requests at once: each admitted request takes
    ``service`` seconds, and proportionally longer when more are admitted (processor sharing)."""
    seen = []
    for _ in range(count):
        busy = limit.admitted
        for _ in range(limit.window_samples):
            limit.sample(service * max(1.0, busy / capacity), busy, admitted_with=busy)
        clock.now += limit.window_seconds
        seen.append(limit.admitted)
    return seen


def test_starts_at_the_ceiling_and_stays_there_under_light_load() -> None:
    """A new process serves a burst: no slow start; and light load never pins it for a probe."""
    clock = Clock()
    limit = GradientLimit(ceiling=10, clock=clock, probe_seconds=2)
    assert limit.admitted == 10
    assert min(windows(limit, clock, 0.005, 400, in_flight=6, admitted_with=1)) == 10  # 20 s, ~8 probes


def test_under_queueing_it_settles_where_latency_stays_within_the_tolerance() -> None:
    clock = Clock()
    limit = GradientLimit(ceiling=40, tolerance=2.0, clock=clock)
    seen = queueing(limit, clock, 400)  # 20 s at saturation
    settled = seen[-100:]
    # Capacity 4: admitting 4 keeps the process busy; up to 2x the unqueued latency means about 8-9.
    assert min(settled) >= 4 and max(settled) <= 12, settled
    assert limit.rtt_noload == pytest.approx(0.005)


def test_a_slower_baseline_is_not_taken_for_queueing() -> None:
    """Every request takes 30 ms whatever the concurrency (a slower plan, a busier host): the limit
    may dip, but the probe measures the new baseline and the limit returns to the ceiling."""
    clock = Clock()
    limit = GradientLimit(ceiling=20, clock=clock)
    windows(limit, clock, 0.005, 40, admitted_with=1)
    seen = windows(limit, clock, 0.030, 200)
    assert seen[-1] == 20 and limit.rtt_noload == pytest.approx(0.030)


def test_does_not_grow_when_the_load_and_not_the_limit_kept_concurrency_low() -> None:
    clock = Clock()
    limit = GradientLimit(ceiling=40, clock=clock)
    queueing(limit, clock, 200)
    low = limit.admitted
    windows(limit, clock, 0.005, 100, in_flight=0, admitted_with=3)
    assert low < 40 and limit.admitted == low


def test_a_database_failure_cuts_the_limit_whatever_the_latency() -> None:
    clock = Clock()
    limit = GradientLimit(ceiling=10, clock=clock, probe_seconds=1e9)
    windows(limit, clock, 0.005, 200, admitted_with=1)
    before = limit.limit
    for _ in range(limit.window_samples):
        limit.sample(0.001, 10, dropped=True)
    clock.now += limit.window_seconds
    limit.sample(0.001, 10)
    # The latency alone would have kept it at the ceiling.
    assert before == 10 and limit.limit <= before * 0.9 + 1e-9


def test_under_overload_a_probe_pins_the_limit_for_one_window_only() -> None:
    clock = Clock()
    limit = GradientLimit(ceiling=40, clock=clock, probe_seconds=5)
    queueing(limit, clock, 200)
    seen = queueing(limit, clock, 400)  # 20 s: 3 or 4 regular probes, nobody admitted when idle
    pinned = [i for i, n in enumerate(seen) if n == limit.probe_limit]
    assert 2 <= len(pinned) <= 5, seen
    assert all(seen[i + 1] > limit.probe_limit for i in pinned if i + 1 < len(seen))


def test_requests_admitted_before_the_pin_do_not_count_as_unqueued() -> None:
    clock = Clock()
    limit = GradientLimit(ceiling=16, clock=clock)
    windows(limit, clock, 0.004, 2)  # the first window closes at the ceiling: the probe pins
    assert limit.admitted == limit.probe_limit
    clock.now += 1.0
    for _ in range(limit.window_samples * 4):
        limit.sample(2.0, 16)  # begun 2 s ago, before the pin: ignored
    assert limit.admitted == limit.probe_limit
    windows(limit, clock, 0.004, 1, in_flight=2)
    assert limit.rtt_noload == pytest.approx(0.004) and limit.admitted == 16


@pytest.fixture(params=["static", "adaptive"])
def admission(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    # The test pool holds 3: either limit admits two requests per process at first (the adaptive one
    # starts at its ceiling) and leaves one connection to the routes that are never shed.
    monkeypatch.setenv("API_ADMISSION", request.param)


async def test_above_the_limit_a_request_is_refused_at_once_and_health_and_admin_still_answer(
    admission: None, migrated_database: str, test_db: asyncpg.Connection
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
