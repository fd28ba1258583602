"""Admission control: past saturation a request is refused at once instead of queueing behind the pool.

A process serves at most its pool's connections of database work at a time; a request beyond that waits
in the pool's queue (up to DB_POOL_TIMEOUT), and then every admitted request pays that wait. So each API
process limits the requests in flight on the routes that do database work, and answers one above the
limit ``503 overloaded`` with Retry-After before it does anything else.

The limit adapts, as a gradient limit (Netflix's concurrency-limits): it grows while admitted requests
take at most API_ADMISSION_TOLERANCE times the latency measured without queueing, and shrinks in
proportion when they take longer, so it settles where the process is busy but nothing queues. The pool
less one connection is its ceiling: more admitted requests could only wait there, and the connection
left over serves ``/health``, ``/metrics`` and the admin routes, which are never shed (an operator must
see an overloaded service).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

import structlog
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config.settings import get_settings
from app.core import metrics
from app.core.logging import LogRateLimiter

log = structlog.get_logger("app.admission")
OVERLOADED_DETAIL = "this API process is at its concurrency limit; retry shortly"
_rejections = LogRateLimiter(interval=1.0)


class GradientLimit:
    """A concurrency limit from latency: ``limit * min(1, tolerance * rtt_noload / rtt) + 1``, smoothed.

    Latency is averaged over windows of at least ``window_seconds`` and ``window_samples`` requests.
    ``rtt_noload`` is the lowest window seen, measured again every ``probe_seconds`` (jittered, like
    Envoy's adaptive concurrency filter): for one window the limit is pinned low and only requests
    admitted under it count, then the limit is restored. Without that, a baseline that rose (a slower
    plan, a busier host) would read as queueing and hold the limit down for good. A window in which a
    request failed for want of the database (a 503 of its own) cuts the limit by a tenth.
    """

    def __init__(
        self,
        *,
        ceiling: int,
        floor: int = 1,
        tolerance: float = 1.5,
        smoothing: float = 0.2,
        window_seconds: float = 0.05,
        window_samples: int = 8,
        probe_seconds: float = 30.0,
        probe_limit: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling, self.floor = ceiling, min(floor, ceiling)
        self.tolerance, self.smoothing = tolerance, smoothing
        self.window_seconds, self.window_samples = window_seconds, window_samples
        self.probe_seconds, self.probe_limit = probe_seconds, max(self.floor, min(probe_limit, ceiling))
        self._clock = clock
        # Slow start: a process that begins under overload would otherwise take the latency of a full
        # pool for its unloaded latency.
        self.limit = float(self.probe_limit)
        self.rtt_noload: float | None = None
        self._probe_from: float | None = None  # while probing: when it began
        self._restore = self.limit
        self._next_probe = clock() + self._probe_interval()
        self._reset_window(clock())

    def _probe_interval(self) -> float:
        return self.probe_seconds * (1 + random.random() / 2)

    def _reset_window(self, now: float) -> None:
        self._window_start, self._total, self._count, self._peak, self._dropped = now, 0.0, 0, 0, False

    def sample(self, rtt: float, in_flight: int, dropped: bool = False) -> None:
        """One admitted request ended after ``rtt`` seconds, with ``in_flight`` requests admitted."""
        now = self._clock()
        if self._probe_from is not None and now - rtt < self._probe_from:
            return  # admitted before the probe pinned the limit: it says nothing about the baseline
        self._total += rtt
        self._count += 1
        self._peak = max(self._peak, in_flight)
        self._dropped |= dropped
        if now - self._window_start < self.window_seconds or self._count < self.window_samples:
            return
        self._update(self._total / self._count, self._peak, self._dropped, now)
        self._reset_window(now)

    def _update(self, rtt: float, peak: int, dropped: bool, now: float) -> None:
        if self._probe_from is not None:
            self._probe_from, self.rtt_noload, self.limit = None, rtt, self._restore
            return
        if now >= self._next_probe:
            self._next_probe = now + self._probe_interval()
            self._probe_from, self._restore = now, self.limit
            self.limit = min(self.limit, float(self.probe_limit))
            return
        if self.rtt_noload is None or rtt < self.rtt_noload:
            self.rtt_noload = rtt
        if dropped:
            self.limit = max(float(self.floor), self.limit * 0.9)
            return
        if peak < self.limit / 2:
            return  # the load, not the limit, kept concurrency low: no evidence either way
        gradient = max(0.5, min(1.0, self.tolerance * self.rtt_noload / rtt))
        target = self.limit * gradient + 1
        new = self.limit * (1 - self.smoothing) + target * self.smoothing
        self.limit = max(float(self.floor), min(float(self.ceiling), new))

    @property
    def admitted(self) -> int:
        """How many requests may be in flight now."""
        return max(self.floor, int(self.limit))


class StaticLimit:
    """A fixed limit (uvicorn's --limit-concurrency, per route class): the comparison's middle column."""

    def __init__(self, limit: int) -> None:
        self.admitted = limit
        self.limit = float(limit)

    def sample(self, rtt: float, in_flight: int, dropped: bool = False) -> None:
        pass


def _sheddable(path: str, prefix: str, exempt: str) -> bool:
    return path.startswith(prefix) and not path.startswith(exempt)


class AdmissionControl:
    """Plain ASGI middleware between CORS and the request deadline: a refusal costs no routing, no
    authentication and no database round trip, yet still carries CORS headers and is counted by the
    HTTP metrics (under the route it would have taken)."""

    def __init__(
        self, app: ASGIApp, limiter: GradientLimit | StaticLimit, *, prefix: str, exempt: str
    ) -> None:
        self.app = app
        self.limiter = limiter
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

    def _publish(self) -> None:
        admitted = self.limiter.admitted
        if admitted != self._published:
            metrics.API_ADMISSION_LIMIT.labels(self._service).set(admitted)
            self._published = admitted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _sheddable(scope["path"], self.prefix, self.exempt):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limiter.admitted:
            await self._reject(scope, send)
            return
        self.in_flight += 1
        started = time.perf_counter()
        status = 500

        async def send_tracking(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        finally:
            in_flight = self.in_flight
            self.in_flight -= 1
            # A 503 from below is the database's trouble (pool exhausted, timeout): a signal to back off.
            self.limiter.sample(time.perf_counter() - started, in_flight, dropped=status == 503)
            self._publish()

    async def _reject(self, scope: Scope, send: Send) -> None:
        metrics.API_ADMISSION_REJECTED.labels(self._service).inc()
        _label_route(scope)
        if _rejections.allow("overloaded"):
            log.warning(
                "request_rejected_overloaded",
                path=scope["path"],
                in_flight=self.in_flight,
                limit=self.limiter.admitted,
            )
        await send({"type": "http.response.start", "status": 503, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body})


def _label_route(scope: Scope) -> None:
    """The route the request would have reached, for http_requests_total's template label. The routers
    carry their full prefix (app.api.routes), so an included router's own routes match as they are."""
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
    while routes:
        for route in routes:
            if route.matches(scope)[0] is Match.FULL:
                inner = getattr(route, "original_router", None)  # FastAPI's wrapper of an included router
                if inner is None:
                    scope["route"] = route
                    return
                routes = inner.routes
                break
        else:
            return


def admission_limiter(pool_connections: int) -> GradientLimit | StaticLimit | None:
    """The limiter API_ADMISSION names (None: off). Its ceiling leaves one of the process's pool
    connections to the routes never shed, so /health answers truthfully even at the limit."""
    settings = get_settings()
    ceiling = max(1, pool_connections - 1)
    if settings.API_ADMISSION == "off":
        return None
    if settings.API_ADMISSION == "static":
        return StaticLimit(ceiling)
    return GradientLimit(ceiling=ceiling, tolerance=settings.API_ADMISSION_TOLERANCE)
