"""Admission control (app.api.admission): the gradient limit's arithmetic, and the middleware on the
real app and database: a request above the limit is refused at once with 503 overloaded and Retry-After,
while /health and the admin routes are never shed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.api.admission import GradientLimit
from devkit.api import running_api
from devkit.ports import free_port
from tests.support.auth import auth
from tests.support.metrics_text import sample


class Clock:
    """Monotonic and wall-clock time in one, advanced by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **options: float) -> GradientLimit:
    return GradientLimit(clock=clock, wall=clock, **options)  # type: ignore[arg-type]


def run(limit: GradientLimit, clock: Clock, seconds: float, rtt: Callable[[int], float]) -> list[int]:
    """A saturated process for ``seconds``: every admitted slot busy and more requests arriving than it
    admits (one refused per window), each taking ``rtt(n)`` with ``n`` admitted; the limit after each
    window."""
    seen = []
    for _ in range(round(seconds / limit.window_seconds)):
        limit.refused()
        for _ in range(limit.window_samples):
            busy = limit.admitted
            limit.sample(rtt(busy), busy)
        clock.now += limit.window_seconds + 1e-6
        seen.append(limit.admitted)
    return seen


def until_pinned(limit: GradientLimit, clock: Clock, rtt: float) -> None:
    """Runs windows across the next probe boundary, and stops as soon as the probe pinned the limit."""
    clock.now = (clock.now // limit.probe_seconds + 1) * limit.probe_seconds - 0.1
    for _ in range(10):
        run(limit, clock, limit.window_seconds, lambda n: rtt)
        if limit.admitted == limit.probe_limit:
            return
    raise AssertionError("no probe")


def queueing(service: float = 0.005, capacity: int = 4) -> Callable[[int], float]:
    """Serves ``capacity`` requests at once; more admitted take proportionally longer (processor sharing)."""
    return lambda n: service * max(1.0, n / capacity)


def test_starts_at_the_ceiling_and_adapts_only_after_its_first_probe() -> None:
    """A new process serves a burst: no slow start, and no verdict before a baseline was measured."""
    clock = Clock()
    limit = limiter(clock, ceiling=20, probe_seconds=10)
    assert limit.admitted == 20
    seen = run(limit, clock, 5, queueing())
    assert limit.rtt_noload is None and min(seen) == 20


def test_a_process_that_refuses_nothing_is_never_pinned() -> None:
    """A healthy process at its ceiling keeps serving through the probe boundaries: a pin would refuse
    requests it can serve."""
    clock = Clock()
    limit = limiter(clock, ceiling=20, probe_seconds=10)
    seen = []
    for _ in range(round(35 / limit.window_seconds)):
        for _ in range(limit.window_samples):
            limit.sample(0.005, 12)
        clock.now += limit.window_seconds + 1e-6
        seen.append(limit.admitted)
    assert min(seen) == 20 and limit.rtt_noload is None


def test_under_queueing_it_settles_where_latency_stays_within_the_tolerance() -> None:
    clock = Clock()
    limit = limiter(clock, ceiling=40, tolerance=2.0, probe_seconds=10)
    seen = run(limit, clock, 40, queueing())
    assert limit.rtt_noload == pytest.approx(0.005)  # the probe pinned it at one: no queueing
    settled = [n for n in seen[-200:] if n > limit.probe_limit]  # the pinned windows aside
    # Capacity 4 keeps the process busy; up to 2x the unqueued latency means about 8-9 admitted.
    assert min(settled) >= 4 and max(settled) <= 12, settled


def test_a_slower_baseline_is_not_taken_for_queueing() -> None:
    """Every request takes 30 ms whatever the concurrency (a slower plan, a busier host): the next
    probe measures the new baseline and the limit returns to the ceiling."""
    clock = Clock()
    limit = limiter(clock, ceiling=20, probe_seconds=10)
    run(limit, clock, 15, lambda n: 0.005)
    seen = run(limit, clock, 30, lambda n: 0.030)
    assert seen[-1] == 20 and limit.rtt_noload == pytest.approx(0.030)


def test_probes_happen_at_the_same_instants_in_every_process() -> None:
    """Processes sharing the cores pin together, so each measures an unloaded host."""
    clock = Clock()
    a, b = limiter(clock, ceiling=20, probe_seconds=10), limiter(clock, ceiling=20, probe_seconds=10)
    pinned_a, pinned_b = [], []
    for _ in range(round(35 / a.window_seconds)):
        for limit, pinned in ((a, pinned_a), (b, pinned_b)):
            limit.refused()
            for _ in range(limit.window_samples):
                limit.sample(0.005, limit.admitted)
            pinned.append(limit.admitted == limit.probe_limit)
        clock.now += a.window_seconds + 1e-6
    starts = [i for i, p in enumerate(pinned_a) if p and (i == 0 or not pinned_a[i - 1])]
    assert len(starts) == 3 and pinned_a == pinned_b
    assert sum(pinned_a) <= 3 * 2  # a pin ends after one window's requests


def test_a_pin_ends_after_its_time_even_without_requests() -> None:
    clock = Clock()
    limit = limiter(clock, ceiling=20, probe_seconds=10)
    until_pinned(limit, clock, 0.005)
    clock.now += limit.pin_seconds  # idle meanwhile
    assert limit.admitted == 20


def test_does_not_grow_when_the_load_and_not_the_limit_kept_concurrency_low() -> None:
    clock = Clock()
    limit = limiter(clock, ceiling=40, probe_seconds=10)
    run(limit, clock, 15, queueing())
    low = limit.admitted
    for _ in range(100):
        for _ in range(limit.window_samples):
            limit.sample(0.005, 1)
        clock.now += limit.window_seconds + 1e-6
    assert low < 40 and limit.admitted == low


def test_requests_admitted_before_the_pin_do_not_count_as_unqueued() -> None:
    clock = Clock()
    limit = limiter(clock, ceiling=16, probe_seconds=10)
    until_pinned(limit, clock, 0.004)
    for _ in range(limit.window_samples * 4):
        limit.sample(2.0, 16)  # begun 2 s ago, before the pin: ignored
    assert limit.admitted == limit.probe_limit and limit.rtt_noload is None
    for _ in range(limit.window_samples):
        limit.sample(0.004, 1)
    assert limit.rtt_noload == pytest.approx(0.004) and limit.admitted == 16


def test_under_a_pin_the_edge_applies_only_requests_that_started_alone_measure_the_baseline() -> None:
    """Behind an edge the pin is advisory: the edge hears of it at its next agent-check, so for a
    moment the process still admits more; a request that started with others in flight is queued."""
    clock = Clock()
    limit = limiter(clock, ceiling=16, probe_seconds=10)
    until_pinned(limit, clock, 0.004)
    clock.now += 0.05
    for _ in range(limit.window_samples * 4):
        limit.sample(0.040, 6, started_with=6)  # begun under the pin, but behind five others
    assert limit.admitted == limit.probe_limit and limit.rtt_noload is None
    for _ in range(limit.window_samples):
        limit.sample(0.004, 1, started_with=1)
    assert limit.rtt_noload == pytest.approx(0.004) and limit.admitted == 16


def test_behind_an_edge_every_process_probes_in_the_edges_window_without_having_refused() -> None:
    """The edge pins (one request per process) from each boundary; a process probes there whether or
    not it refused (what the edge refused never reached it), and times only requests begun once the
    edge's pin took hold and what it had admitted drained."""
    from app.api.admission import edge_pinned

    clock = Clock()
    limit = limiter(clock, ceiling=16, probe_seconds=10, pin_seconds=0.25, edge_settle_seconds=0.2)
    boundary = (clock.now // 10 + 1) * 10
    clock.now = boundary - 0.1
    while limit.admitted != limit.probe_limit:
        assert clock.now < boundary + 0.2, "no probe at the boundary"
        for _ in range(limit.window_samples):
            limit.sample(0.004, 16)
        clock.now += limit.window_seconds + 1e-3
    clock.now = boundary + 0.15
    limit.sample(0.010, 1)  # begun at +0.14 s: the edge may not have applied the pin yet
    assert limit.rtt_noload is None
    clock.now = boundary + 0.3
    for _ in range(limit.window_samples):
        limit.sample(0.006, 1)
    assert limit.rtt_noload == pytest.approx(0.006) and limit.admitted == 16
    assert edge_pinned(boundary + 0.3) and edge_pinned(boundary) and not edge_pinned(boundary + 0.5)


async def test_behind_an_edge_a_process_never_refuses() -> None:
    """API_ADMISSION=edge: the edge refuses; the process admits what it is sent (a refusal written
    here would wait for a core), past its own limit."""
    from app.api import admission
    from app.api.admission import AdmissionControl

    release = asyncio.Event()
    reached: list[str] = []

    async def app(scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
        reached.append(scope["path"])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limit = GradientLimit(ceiling=2)
    control = AdmissionControl(app, limit, prefix="/api/v1/", exempt="/api/v1/admin", enforce=False)
    sent: list[dict] = []  # type: ignore[type-arg]

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        sent.append(message)

    async def receive() -> dict:  # type: ignore[type-arg]
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/api/v1/task-logs", "root_path": ""}
    calls = [asyncio.create_task(control(dict(scope), receive, send)) for _ in range(3)]
    while len(reached) < 3:
        await asyncio.sleep(0.001)
    assert control.in_flight == 3 > limit.admitted  # admitted past its limit, none refused
    assert not admission.overloaded()  # the HTTP protocol never refuses early either
    assert admission.early_refusal("GET", "/api/v1/task-logs") is None
    release.set()
    await asyncio.gather(*calls)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200, 200, 200]


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


def _exchange(sock: socket.socket, request: bytes, answers: int = 1) -> list[bytes]:
    """Send ``request`` (one or more pipelined requests) and read ``answers`` whole responses."""
    sock.sendall(request)
    data = b""
    responses: list[bytes] = []
    while len(responses) < answers:
        head, sep, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)  # fmt: skip
        if sep and length is not None and len(rest) >= length:
            responses.append(head + sep + rest[:length])
            data = rest[length:]
            continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(responses)} answers: {data!r}"
        data += chunk
    return responses


@pytest.mark.slow
def test_the_production_server_refuses_as_the_headers_end_and_keeps_the_connection(
    subprocess_env: dict[str, str], tmp_path: Path, migrated_database: str
) -> None:
    """With the start command's protocol, a refusal is written as the request's headers end (no ASGI
    request): 503 overloaded, Retry-After, counted, and the kept-alive connection goes on serving,
    pipelined answers in order. A request with a body still reaches the app, which refuses it there."""
    import psycopg

    env = {**subprocess_env, "API_ADMISSION": "static", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    port = free_port()
    token = auth("admin")["Authorization"]
    read = f"GET /api/v1/task-logs?limit=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n".encode()
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with (
        running_api(env, port, production=True) as base,
        psycopg.connect(migrated_database) as lock,
        concurrent.futures.ThreadPoolExecutor(2) as threads,
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        lock.execute("LOCK TABLE task_logs IN ACCESS EXCLUSIVE MODE")  # psycopg: inside a transaction
        admitted = [threads.submit(httpx.get, f"{base}/api/v1/task-logs?limit=1", headers=auth("admin"),
                                   timeout=30) for _ in range(2)]  # fmt: skip
        deadline = time.monotonic() + 10
        while (
            "api_admission_limit" not in (metrics := httpx.get(f"{base}/metrics").text)
            or sample(metrics, "db_pool_connections_in_use", service="api") < 2
        ):
            assert time.monotonic() < deadline, "the two reads never held their connections"
            time.sleep(0.05)

        started = time.perf_counter()
        refused, healthy = _exchange(sock, read + health, answers=2)
        elapsed = time.perf_counter() - started
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert b"retry-after: " in refused.lower() and b'"reason": "overloaded"' in refused
        assert healthy.startswith(b"HTTP/1.1 200"), healthy  # same connection, in order
        assert elapsed < 0.5
        with_body = httpx.post(f"{base}/api/v1/roadmaps", json={"topic": "x"}, headers=auth(), timeout=10)
        assert with_body.status_code == 503 and with_body.json()["reason"] == "overloaded"

        lock.rollback()
        assert [f.result().status_code for f in admitted] == [200, 200]
        (after,) = _exchange(sock, read)  # the refused request's connection serves the next one
        assert after.startswith(b"HTTP/1.1 200"), after
        text = httpx.get(f"{base}/metrics").text
    assert sample(text, "api_admission_rejected_total", service="api") >= 2
    assert sample(text, "http_requests_total", method="GET", route="/api/v1/task-logs", status="503") >= 1


async def test_the_protocol_refuses_before_the_request_reaches_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the limit, the refusal is written by the HTTP protocol as the headers end: the ASGI app never
    sees the refused request, and sees the next one pipelined on the same connection."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from app.api import admission
    from app.api.admission import AdmissionControl, StaticLimit
    from app.api.http_protocol import BoundedHttpToolsProtocol

    seen: list[str] = []

    async def app(scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    monkeypatch.setattr(admission, "_current", None)
    control = AdmissionControl(app, StaticLimit(1), prefix="/api/v1/", exempt="/api/v1/admin")
    control.in_flight = 1  # one request in flight: at the limit
    config = Config(app, http=BoundedHttpToolsProtocol, log_level="warning", lifespan="off")
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: BoundedHttpToolsProtocol(config, state, {}, loop), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /api/v1/task-logs HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        first = await reader.readuntil(b"}")  # the refusal's JSON body
        second = await asyncio.wait_for(reader.readuntil(b"ok"), 5)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
    assert first.startswith(b"HTTP/1.1 503") and b'"reason": "overloaded"' in first, first
    assert second.lstrip().startswith(b"HTTP/1.1 200"), second
    assert seen == ["/health"]  # the refused request never became an ASGI request


@pytest.mark.slow
def test_behind_haproxy_the_edge_refuses_at_the_published_limit_and_never_sheds_health(
    subprocess_env: dict[str, str], tmp_path: Path, migrated_database: str
) -> None:
    """API_ADMISSION=edge with the project's HAProxy configuration (deploy/haproxy/api-edge.cfg) in
    front of the production server: the supervisor's agent reports the worker's limit, HAProxy admits
    that many reads at once and answers the rest 503 overloaded with Retry-After itself, while /health
    and the admin routes pass; the API refuses nothing."""
    import psycopg

    from app.api import admission
    from devkit.edge import running_edge
    from tests.support.system_tools import require

    require("haproxy", "haproxy")
    agent = free_port()
    env = {
        **subprocess_env,
        "API_ADMISSION": "edge",
        "API_EDGE_AGENT_PORT": str(agent),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    port = free_port()
    headers = auth("admin")
    with (
        running_api(env, port, production=True) as base,
        running_edge(port, agent) as edge,
        psycopg.connect(migrated_database) as lock,
        concurrent.futures.ThreadPoolExecutor(3) as threads,
    ):
        # Run between two of the edge's probes (one request per worker, from each 10 s boundary).
        offset = time.time() % admission.PROBE_SECONDS
        if not 0.5 <= offset <= 5:
            time.sleep((0.6 - offset) % admission.PROBE_SECONDS)
        # The test pool holds 3: the worker's limit starts at its ceiling, the pool less one.
        with socket.create_connection(("127.0.0.1", agent), timeout=5) as sock:
            assert sock.makefile("rb").readline() == b"maxconn:2\n"
        time.sleep(0.3)  # the edge's next agent-checks (every 100 ms)
        lock.execute("LOCK TABLE task_logs IN ACCESS EXCLUSIVE MODE")
        read = f"{edge.url}/api/v1/task-logs?limit=1"
        admitted = [threads.submit(httpx.get, read, headers=headers, timeout=30) for _ in range(2)]
        deadline = time.monotonic() + 10
        while sample(httpx.get(f"{base}/metrics").text, "db_pool_connections_in_use", service="api") < 2:
            assert time.monotonic() < deadline, "the two reads never held their connections"
            time.sleep(0.05)
        queued = threads.submit(httpx.get, read, headers=headers, timeout=30)  # waits for a slot at the edge
        time.sleep(0.1)

        started = time.perf_counter()
        refused = httpx.get(read, headers=headers, timeout=10)
        elapsed = time.perf_counter() - started
        assert refused.status_code == 503, refused.text
        assert refused.json()["reason"] == "overloaded" and int(refused.headers["retry-after"]) >= 1
        assert elapsed < 0.5
        assert httpx.get(f"{edge.url}/health", timeout=10).status_code == 200  # never shed
        admin = httpx.get(f"{edge.url}/api/v1/admin/tavily-keys", headers=headers, timeout=10)
        assert admin.status_code == 200, admin.text

        lock.rollback()
        assert [f.result().status_code for f in admitted] == [200, 200]
        assert queued.result().status_code in (200, 503)  # the edge's queue waits at most 1 s
        assert httpx.get(read, headers=headers, timeout=10).status_code == 200
        text = httpx.get(f"{base}/metrics").text
    assert sample(text, "api_admission_rejected_total", service="api") == 0
