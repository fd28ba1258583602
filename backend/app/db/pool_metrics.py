"""Pool instrumentation through SQLAlchemy's own pool events.

* ``connect`` / ``close`` / ``close_detached``: server connections open (what pg_stat_activity sees);
* ``checkout`` / ``checkin``: connections in use, and how long each was held (the guide's
  ``db_connection_hold_seconds``: hold time, not connection count, is what exhausts a pool);
* at ``DB_POOL_HIGH_USAGE_RATIO`` / ``DB_POOL_CRITICAL_USAGE_RATIO`` of ``pool_size + max_overflow``
  (the guide's 70% / 90%), the guide's ``db_pool_high_usage`` (info) and ``db_pool_critical_usage``
  (error) events, at most once per ``DB_POOL_USAGE_LOG_INTERVAL`` seconds per level, so a busy pool
  does not flood the log.

Pool timeouts are counted where they surface, in ``app.db.session`` (``safe_session``, ``autocommit``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool

from app.core import metrics
from app.core.logging import LogRateLimiter
from app.db.leak_sites import holder_site

log = structlog.get_logger("app.db.pool")

_CHECKOUT_AT = "checkout_at"
_LEAK_TIMER = "leak_timer"


@dataclass
class PoolInstrumentation:
    service: str
    max_connections: int
    high_ratio: float
    critical_ratio: float
    limiter: LogRateLimiter
    leak_threshold: float = 0.0
    in_use: int = 0
    open: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._in_use_gauge = metrics.DB_POOL_IN_USE.labels(self.service)
        self._open_gauge = metrics.DB_POOL_OPEN.labels(self.service)
        self._hold = metrics.DB_HOLD_SECONDS.labels(self.service)

    # -- pool event listeners -------------------------------------------------------------------
    def on_connect(self, _dbapi_conn: Any, _record: Any) -> None:
        with self._lock:
            self.open += 1
            self._open_gauge.set(self.open)

    def on_close(self, _dbapi_conn: Any, _record: Any = None) -> None:
        with self._lock:
            self.open = max(0, self.open - 1)
            self._open_gauge.set(self.open)

    def on_checkout(self, _dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        record.info[_CHECKOUT_AT] = time.perf_counter()
        if self.leak_threshold:
            self._arm_leak_timer(record)
        with self._lock:
            self.in_use += 1
            in_use = self.in_use
            self._in_use_gauge.set(in_use)
        self._log_usage(in_use)

    def on_checkin(self, _dbapi_conn: Any, record: Any) -> None:
        timer = record.info.pop(_LEAK_TIMER, None)
        if timer is not None:
            timer.cancel()
        started = record.info.pop(_CHECKOUT_AT, None)
        if started is None:
            return  # connection checked out before instrumentation, or already accounted
        self._hold.observe(time.perf_counter() - started)
        with self._lock:
            self.in_use = max(0, self.in_use - 1)
            self._in_use_gauge.set(self.in_use)

    def _arm_leak_timer(self, record: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a synchronous checkout (no loop to time it on): nothing to arm
        holder = asyncio.current_task()  # the leak's holder: its stack is read only if the timer fires
        started = record.info[_CHECKOUT_AT]

        def suspect() -> None:
            if record.info.get(_CHECKOUT_AT) is started:  # still the same checkout
                log.warning(
                    "db_connection_leak_suspected",
                    pool_service=self.service,
                    held_seconds=round(time.perf_counter() - started, 1),
                    threshold_seconds=self.leak_threshold,
                    held_by=holder_site(holder),
                )

        record.info[_LEAK_TIMER] = loop.call_later(self.leak_threshold, suspect)

    def _log_usage(self, checked_out: int) -> None:
        ratio = checked_out / self.max_connections
        if ratio >= self.critical_ratio:
            if self.limiter.allow("critical"):
                log.error(
                    "db_pool_critical_usage",
                    checked_out=checked_out,
                    max_connections=self.max_connections,
                    usage_ratio=round(100 * ratio, 1),
                    pool_service=self.service,
                )
        elif ratio >= self.high_ratio and self.limiter.allow("high"):
            log.info(
                "db_pool_high_usage",
                checked_out=checked_out,
                max_connections=self.max_connections,
                usage_ratio=round(100 * ratio, 1),
                pool_service=self.service,
            )


@dataclass(frozen=True)
class UsageAlerts:
    """When a pool's usage is logged (DB_POOL_*_USAGE_RATIO, at most once per log interval per level)
    and after how long a held connection is reported as a suspected leak (0: never)."""

    high_ratio: float
    critical_ratio: float
    log_interval: float
    leak_threshold: float


def instrument_pool(
    engine: AsyncEngine, service: str, pool_size: int, max_overflow: int, alerts: UsageAlerts
) -> PoolInstrumentation:
    pool: Pool = engine.sync_engine.pool
    inst = PoolInstrumentation(
        service=service,
        max_connections=pool_size + max_overflow,
        high_ratio=alerts.high_ratio,
        critical_ratio=alerts.critical_ratio,
        limiter=LogRateLimiter(alerts.log_interval),
        leak_threshold=alerts.leak_threshold,
    )
    metrics.DB_POOL_SIZE.labels(service).set(pool_size)
    metrics.DB_POOL_MAX_CONNECTIONS.labels(service).set(pool_size + max_overflow)
    metrics.DB_POOL_IN_USE.labels(service).set(0)
    metrics.DB_POOL_OPEN.labels(service).set(0)
    # Exported at 0 from the start, so rate(db_pool_connection_timeouts_total[5m]) has a baseline.
    metrics.DB_POOL_TIMEOUTS.labels(service)
    event.listen(pool, "connect", inst.on_connect)
    event.listen(pool, "close", inst.on_close)
    event.listen(pool, "close_detached", inst.on_close)
    event.listen(pool, "checkout", inst.on_checkout)
    event.listen(pool, "checkin", inst.on_checkin)
    return inst


def record_pool_timeout(service: str) -> None:
    metrics.DB_POOL_TIMEOUTS.labels(service).inc()
