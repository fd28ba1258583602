"""Admission control: past saturation a request is refused at once instead of queueing behind the pool.

A process serves at most its pool's connections of database work at a time; a request beyond that waits
in the pool's queue (up to DB_POOL_TIMEOUT), and then every admitted request pays that wait. So each API
process limits the requests in flight on the routes that do database work, and answers one above the
limit ``503 overloaded`` with Retry-After before it does anything else.

The limit adapts, as a gradient limit (Netflix's concurrency-limits, Envoy's adaptive concurrency): it
grows while admitted requests take at most API_ADMISSION_TOLERANCE times the latency measured without
queueing, and shrinks in proportion when they take longer, so it settles where the host is busy but
nothing queues. The pool
less one connection is its ceiling: more admitted requests could only wait there, and the connection
left over serves ``/health``, ``/metrics`` and the admin routes, which are never shed (an operator must
see an overloaded service).

The middleware (``AdmissionControl``) counts what is in flight and is the authority. At the limit, the
HTTP protocol asks ``early_refusal`` as each request's headers end and writes the refusal itself: under
overload most of a refusal's time went to waiting for its asyncio task and the ASGI stack.

Behind an edge (API_ADMISSION=edge, ``app.api.edge``) the process still computes its limit but does not
refuse: the edge admits at most the processes' limits summed and refuses the rest.
A refusal written here waits for its worker's turn on a core, which on a saturated host is most of
its time (8 workers on 2 cores: tens of milliseconds); HAProxy's takes well under one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import structlog
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import metrics_middleware
from app.config.settings import get_settings
from app.core import metrics
from app.core.logging import LogRateLimiter

log = structlog.get_logger("app.admission")
# Every 10 s the unqueued latency is measured anew, for up to 0.25 s; behind an edge after 0.2 s more.
PROBE_SECONDS, PIN_SECONDS, EDGE_PIN_SETTLE_SECONDS = 10.0, 0.25, 0.2
OVERLOADED_DETAIL = "this API process is at its concurrency limit; retry shortly"
_rejections = LogRateLimiter(interval=1.0)


class GradientLimit:
    """A concurrency limit from latency: ``limit * min(1, tolerance * rtt_noload / rtt) + 1``, smoothed.

    Latency is averaged over windows of at least ``window_seconds`` and ``window_samples`` requests.
    ``rtt_noload``, the latency of a request that does not queue, is measured by a probe (Envoy's
    minRTT window): the limit is pinned at ``probe_limit`` until ``window_samples`` requests admitted
    under the pin have ended, or ``pin_seconds`` passed, and their average is the new baseline. Probes
    run at the same wall-clock instants in every process (each ``probe_seconds`` boundary): uvicorn's
    workers share the cores, so one process pinning alone would measure the latency the others' load
    imposes, and the limits would settle where the host is oversubscribed. A process probes only if it
    refused a request since the last boundary: a pin refuses what a healthy process would have served.
    Without a baseline (before its first probe) the limit only grows, towards the ceiling. A failure of
    the database is not a signal: its 503s are quick, shedding more would not help, and the ceiling
    already keeps admitted requests from exhausting the pool; a slow database shows as latency.
    """

    def __init__(
        self,
        *,
        ceiling: int,
        floor: int = 1,
        tolerance: float = 2.0,
        smoothing: float = 0.2,
        window_seconds: float = 0.05,
        window_samples: int = 8,
        probe_seconds: float = PROBE_SECONDS,
        probe_limit: int = 1,
        pin_seconds: float = PIN_SECONDS,
        edge_settle_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.ceiling, self.floor = ceiling, min(floor, ceiling)
        self.tolerance, self.smoothing = tolerance, smoothing
        self.window_seconds, self.window_samples = window_seconds, window_samples
        self.probe_seconds, self.probe_limit = probe_seconds, max(self.floor, min(probe_limit, ceiling))
        self.pin_seconds = pin_seconds
        # Non-zero: behind an edge (API_ADMISSION=edge). The process never sees what the edge refused, so
        # it probes at every boundary it sees load at, as Envoy's adaptive concurrency filter does. The
        # pin is the edge's, from each boundary on in every process at once (app.api.edge); it reaches
        # HAProxy at its next agent-check, then what it had admitted drains. So a request measures the
        # baseline if it began between this long after the boundary and pin_seconds later.
        self.edge_settle = edge_settle_seconds
        self._clock, self._wall = clock, wall
        # Optimistic, as a new process should serve a burst.
        self.limit = float(ceiling)
        self.rtt_noload: float | None = None
        self._pinned_since: float | None = None  # while the limit is pinned for a probe
        self._restore = self.limit
        self._probe_slot = self._slot()
        self._pin_total, self._pin_count = 0.0, 0
        self._refused = False  # since the last probe boundary
        self._reset_window(clock())

    def _slot(self) -> int:
        return int(self._wall() // self.probe_seconds)

    def _reset_window(self, now: float) -> None:
        self._window_start, self._total, self._count, self._peak = now, 0.0, 0, 0

    def sample(self, rtt: float, in_flight: int, started_with: int = 1) -> None:
        """One admitted request ended after ``rtt`` seconds, with ``in_flight`` requests admitted; it
        started with ``started_with`` in flight (itself included). Under a pin that an edge enforces,
        the process admits more than the pin for a moment (the edge hears of the pin at its next check),
        so only a request that started within the pin measures the unqueued latency."""
        now = self._clock()
        if self._pinned_since is not None:
            if started_with <= self.probe_limit and self._begun_under_pin(now, rtt):
                self._pin_total += rtt
                self._pin_count += 1
            self._end_pin(now)
            return
        self._total += rtt
        self._count += 1
        self._peak = max(self._peak, in_flight)
        if now - self._window_start < self.window_seconds or self._count < self.window_samples:
            return
        self._update(self._total / self._count, self._peak, now)
        self._reset_window(now)

    def refused(self) -> None:
        """A request was refused at the limit."""
        self._refused = True

    def _slot_offset(self, seconds_ago: float = 0.0) -> float:
        """Where in the probe slot the pin began in (wall clock) the instant ``seconds_ago`` falls."""
        return self._wall() - seconds_ago - self._probe_slot * self.probe_seconds

    def _begun_under_pin(self, now: float, rtt: float) -> bool:
        if self.edge_settle:  # the edge's pin: the same wall-clock instants in every process and the agent
            return self.edge_settle <= self._slot_offset(rtt) < self.edge_settle + self.pin_seconds
        assert self._pinned_since is not None
        return now - rtt >= self._pinned_since

    def _end_pin(self, now: float) -> None:
        assert self._pinned_since is not None
        if self.edge_settle:
            over = self._slot_offset() >= self.edge_settle + self.pin_seconds
        else:
            over = now - self._pinned_since >= self.pin_seconds
        if self._pin_count < self.window_samples and not over:
            return
        if self._pin_count:
            self.rtt_noload = self._pin_total / self._pin_count
        self._pinned_since, self.limit = None, self._restore
        self._reset_window(now)

    def _update(self, rtt: float, peak: int, now: float) -> None:
        slot = self._slot()
        if slot != self._probe_slot:
            self._probe_slot = slot
            refused, self._refused = self._refused, False
            if refused or self.edge_settle:
                self._pinned_since, self._restore = now, self.limit
                self._pin_total, self._pin_count = 0.0, 0
                self.limit = min(self.limit, float(self.probe_limit))
                return
        if peak < self.limit / 2:
            return  # the load, not the limit, kept concurrency low: no evidence either way
        # No baseline yet: no evidence of queueing either.
        gradient = 1.0
        if self.rtt_noload is not None:
            gradient = max(0.5, min(1.0, self.tolerance * self.rtt_noload / rtt))
        target = self.limit * gradient + 1
        new = self.limit * (1 - self.smoothing) + target * self.smoothing
        self.limit = max(float(self.floor), min(float(self.ceiling), new))

    @property
    def admitted(self) -> int:
        """How many requests may be in flight now."""
        if self._pinned_since is not None:
            self._end_pin(self._clock())  # a pin outlives its time only until the next request
        return max(self.floor, int(self.limit))


class StaticLimit:
    """A fixed limit, like uvicorn's --limit-concurrency but on the database routes only."""

    def __init__(self, limit: int) -> None:
        self.admitted = limit

    def sample(self, rtt: float, in_flight: int, started_with: int = 1) -> None:
        pass

    def refused(self) -> None:
        pass


def _sheddable(path: str, prefix: str, exempt: str) -> bool:
    return path.startswith(prefix) and not path.startswith(exempt)


class AdmissionControl:
    """Plain ASGI middleware between CORS and the request deadline: a refusal costs no routing, no
    authentication and no database round trip, yet still carries CORS headers and is counted by the
    HTTP metrics (under the route it would have taken)."""

    def __init__(
        self,
        app: ASGIApp,
        limiter: GradientLimit | StaticLimit,
        *,
        prefix: str,
        exempt: str,
        enforce: bool = True,
    ) -> None:
        self.app = app
        self.limiter = limiter
        # enforce=False (behind an edge): never refuse; the limit is the edge's to apply. The edge admits
        # the processes' limits summed but cannot choose the process (uvicorn's workers share one
        # socket), so one may briefly get more than its own: those wait at the pool, as a refusal
        # written here would take longer than the wait (the module's docstring).
        self.enforce = enforce
        self.prefix, self.exempt = prefix, exempt
        self.in_flight = 0
        self._service = "api"
        retry_after = str(get_settings().RETRY_AFTER_SECONDS).encode()
        self._body = json.dumps({"detail": OVERLOADED_DETAIL, "reason": "overloaded"}).encode()
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
            (b"retry-after", retry_after),
        ]
        self._published = -1
        self._publish()
        self._routes_app: object = None  # the application, for the early refusals' route labels
        # Early refusals carry no CORS headers (CORSMiddleware is not on their way): with CORS, a
        # browser must see the 503, so every refusal then takes the ASGI way.
        self._early = not get_settings().CORS_ORIGINS
        global _current
        _current = self

    def _publish(self) -> None:
        admitted = self.limiter.admitted
        if admitted != self._published:
            metrics.API_ADMISSION_LIMIT.labels(self._service).set(admitted)
            self._published = admitted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _sheddable(scope["path"], self.prefix, self.exempt):
            if scope["type"] == "lifespan":
                self._routes_app = scope.get("app")
            await self.app(scope, receive, send)
            return
        if self.at_limit():
            await self._reject(scope, send)
            return
        self.in_flight += 1
        started_with = self.in_flight
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            in_flight = self.in_flight
            self.in_flight -= 1
            rtt = time.perf_counter() - started
            self.limiter.sample(rtt, in_flight, started_with)
            self._publish()

    async def _reject(self, scope: Scope, send: Send) -> None:
        self._refused(scope["path"])
        _label_route(scope)
        await send({"type": "http.response.start", "status": 503, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body})

    def _refused(self, path: str) -> None:
        self.limiter.refused()
        metrics.API_ADMISSION_REJECTED.labels(self._service).inc()
        if _rejections.allow("overloaded"):
            log.warning(
                "request_rejected_overloaded",
                path=path,
                in_flight=self.in_flight,
                limit=self.limiter.admitted,
            )

    def at_limit(self) -> bool:
        return self.enforce and self.in_flight >= self.limiter.admitted

    def refuse_early(self, method: str, path: str) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
        """The refusal (headers, body) if a request for ``path`` is to be refused now, before it becomes
        an ASGI request; counted as the ASGI way counts it (the latency histogram sees 0). None: it goes
        on to the app (which may still refuse it, if others were admitted meanwhile)."""
        if not self._early or not self.at_limit() or not _sheddable(path, self.prefix, self.exempt):
            return None
        self._refused(path)
        scope: Scope = {
            "type": "http",
            "method": method,
            "path": path,
            "root_path": "",
            "app": self._routes_app,
        }
        _label_route(scope)
        metrics_middleware.observe(method, scope.get("route"), 503, 0.0)
        return self._headers, self._body


_current: AdmissionControl | None = None


def overloaded() -> bool:
    """Whether this process is at its limit: the HTTP protocol's check on every request, so cheap."""
    return _current is not None and _current.at_limit()


def early_refusal(method: str, path: str) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
    """For the HTTP protocol (app.api.http_protocol), as a request's headers end: the 503 to write at
    once, or None. A refusal written there costs no asyncio task, no ASGI stack, and no wait behind
    the event loop's next round of callbacks, which under overload is most of a refusal's time."""
    return None if _current is None else _current.refuse_early(method, path)


# Paths seen refused, and the route each would have reached: a refusal must stay cheap, and matching
# walks every route. Bounded: cleared when full (paths carry ids).
_routes: dict[tuple[str, str], object] = {}


def _label_route(scope: Scope) -> None:
    """The route the request would have reached, for http_requests_total's template label."""
    key = (scope.get("method", "GET"), scope["path"])
    route = _routes.get(key)
    if route is None:
        route = _match(scope)
        if len(_routes) >= 1024:
            _routes.clear()
        _routes[key] = route
    if route is not False:
        scope["route"] = route


def _match(scope: Scope) -> object:
    """The routers carry their full prefix (app.api.routes), so an included router's own routes match
    as they are. False: no route (http_requests_total then says "unmatched")."""
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
    while routes:
        for route in routes:
            if route.matches(scope)[0] is Match.FULL:
                inner = getattr(route, "original_router", None)  # FastAPI's wrapper of an included router
                if inner is None:
                    return route
                routes = inner.routes
                break
        else:
            break
    return False


def admission_limiter(pool_connections: int) -> GradientLimit | StaticLimit | None:
    """The limiter API_ADMISSION names (None: off). Its ceiling leaves one of the process's pool
    connections to the routes never shed, so /health answers truthfully even at the limit."""
    settings = get_settings()
    if settings.API_ADMISSION == "off":
        return None
    if settings.API_ADMISSION == "static":
        return StaticLimit(ceiling(pool_connections))
    # "adaptive", and "edge": the same limit, applied by the edge (AdmissionControl(enforce=False)).
    return GradientLimit(
        ceiling=ceiling(pool_connections),
        tolerance=settings.API_ADMISSION_TOLERANCE,
        edge_settle_seconds=EDGE_PIN_SETTLE_SECONDS if settings.API_ADMISSION == "edge" else 0.0,
    )


def ceiling(pool_connections: int) -> int:
    """A process's highest limit: its pool less the connection kept for the routes never shed."""
    return max(1, pool_connections - 1)


def edge_pinned(wall: float) -> bool:
    """Whether the edge's pin holds at wall-clock ``wall``: from each probe boundary, long enough for
    HAProxy to hear of it (agent-check every 100 ms, deploy/haproxy/api-edge.cfg), for what it had
    admitted to drain, and for the processes to measure."""
    return wall % PROBE_SECONDS < EDGE_PIN_SETTLE_SECONDS + PIN_SECONDS
