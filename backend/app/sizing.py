"""Each service of the topology as the settings size it: its replicas, processes, pools and shutdown
bound.

The one place a service's plan is computed: the budget, ``--suggest``, a worker's child count
(``app.worker.lifecycle``), the start commands (``app.start_commands``), the Railway file and the docs
tables all read ``plan`` / ``fleet``. It reads the settings by the variable names the topology gives
(``<PREFIX>_DB_POOL_SIZE`` ...) through ``Sized``, and imports nothing from ``app.config``, which sits
above it in the layer order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from app.topology import RETRY_COUNTDOWN_MAX, SERVICES, Service, service


class Sized(Protocol):
    """What a plan reads of the settings; the per-service variables are read by name (getattr)."""

    SERVICE_TYPE: str
    DB_POOL_SIZE: int
    DB_MAX_OVERFLOW: int
    LANGGRAPH_POOL_MAX_SIZE: int
    DB_POOL_HIGH_USAGE_RATIO: float
    API_KEEP_ALIVE_SECONDS: int
    API_DRAIN_SECONDS: float
    REQUEST_TIMEOUT_SECONDS: float
    CELERY_SOFT_SHUTDOWN_TIMEOUT: float
    SHUTDOWN_MARGIN_SECONDS: float


@dataclass(frozen=True)
class PoolSizing:
    pool_size: int
    max_overflow: int

    @property
    def max_connections(self) -> int:
        return self.pool_size + self.max_overflow


@dataclass(frozen=True)
class ServicePlan:
    """One service under given settings: the figures the budget, guard, audit and Railway file use."""

    service: Service
    replicas: int
    processes: int  # per replica: uvicorn workers or Celery children (prefork parents open none)
    pool: PoolSizing  # the SQLAlchemy pool of each process
    langgraph_max_size: int  # the checkpointer pool of each process (0 when it opens none)
    time_limit: int | None

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def per_process(self) -> int:
        return self.pool.max_connections

    @property
    def total_processes(self) -> int:
        return self.replicas * self.processes

    @property
    def sqlalchemy(self) -> int:
        return self.total_processes * self.per_process

    @property
    def langgraph(self) -> int:
        return self.total_processes * self.langgraph_max_size

    @property
    def max_connections(self) -> int:
        """The most connections the service can hold at once, across its replicas."""
        return self.sqlalchemy + self.langgraph


def pool_sizing(settings: Sized, name: str | None = None) -> PoolSizing:
    """The SQLAlchemy pool of one process of ``name`` (default: this process's SERVICE_TYPE).

    A service's own ``<PREFIX>_DB_POOL_SIZE`` / ``_DB_MAX_OVERFLOW`` win; unset, the shared
    ``DB_POOL_SIZE`` / ``DB_MAX_OVERFLOW`` apply, all persistent for a ``fixed_pool`` service (the
    same maximum). One-off tools (migrate, audit) use the shared values.
    """
    shared = PoolSizing(settings.DB_POOL_SIZE, settings.DB_MAX_OVERFLOW)
    spec = next((s for s in SERVICES if s.name == (name or settings.SERVICE_TYPE)), None)
    if spec is None:
        return shared
    default = PoolSizing(shared.max_connections, 0) if spec.fixed_pool else shared
    size = getattr(settings, spec.pool_size_var)
    overflow = getattr(settings, spec.max_overflow_var)
    return PoolSizing(
        default.pool_size if size is None else size,
        default.max_overflow if overflow is None else overflow,
    )


def plan(settings: Sized, name: str) -> ServicePlan:
    spec = service(name)
    return ServicePlan(
        service=spec,
        replicas=getattr(settings, spec.replicas_var),
        processes=getattr(settings, spec.processes_var),
        pool=pool_sizing(settings, name),
        langgraph_max_size=settings.LANGGRAPH_POOL_MAX_SIZE if spec.checkpointer else 0,
        time_limit=getattr(settings, spec.time_limit_var) if spec.time_limit is not None else None,
    )


def fleet(settings: Sized) -> list[ServicePlan]:
    return [plan(settings, s.name) for s in SERVICES]


def fan_out_checkouts(settings: Sized, name: str | None = None) -> int:
    """Checkouts a process's own fan-out (a content task's concept gather) may hold at once: below the
    pool's high-usage mark, so work inside one task never starves its own pool or trips
    db_pool_critical_usage, whatever CONCEPT_CONCURRENCY_LIMIT is."""
    # round(): 25 x 0.56 is 14.000000000000002 in floating point, and 14 would sit on the mark.
    mark = round(pool_sizing(settings, name).max_connections * settings.DB_POOL_HIGH_USAGE_RATIO, 9)
    return max(1, math.ceil(mark) - 1)


def api_graceful_shutdown_timeout(settings: Sized) -> int:
    """uvicorn's ``--timeout-graceful-shutdown``: a request ends by REQUEST_TIMEOUT_SECONDS (503
    request_timeout); the second more lets that answer be written. Past it uvicorn cancels the rest."""
    return math.ceil(settings.REQUEST_TIMEOUT_SECONDS) + 1


def shutdown_seconds(settings: Sized, name: str) -> int:
    """The longest a replica of ``name`` takes from SIGTERM to the exit of its whole process tree: what
    Railway's ``drainingSeconds`` (SIGTERM to SIGKILL) must allow.

    * API: the drain (API_DRAIN_SECONDS), then the requests in flight (``api_graceful_shutdown_timeout``);
    * worker: Celery's soft shutdown (CELERY_SOFT_SHUTDOWN_TIMEOUT), then the cold shutdown hands back
      what still runs.

    SHUTDOWN_MARGIN_SECONDS covers closing the pools and the exit (measured in
    docs/connection-pool-guide.md, "What each service does in a deploy window").
    """
    if service(name).is_worker:
        work = settings.CELERY_SOFT_SHUTDOWN_TIMEOUT
    else:
        work = settings.API_DRAIN_SECONDS + api_graceful_shutdown_timeout(settings)
    return math.ceil(work + settings.SHUTDOWN_MARGIN_SECONDS)


def celery_visibility_timeout(settings: Sized) -> int:
    """Seconds after which Redis hands an unacknowledged message to another worker.

    A late-acknowledged message stays unacknowledged through its retry countdown (at most
    RETRY_COUNTDOWN_MAX) and its run (at most its service's hard time limit); 10% of that limit more
    covers scheduling and the kill at the limit. Shorter, and a slow but alive task runs twice; longer,
    and the tasks of a worker that died (SIGKILL, OOM) wait that much longer for another worker.
    """
    limits = [p.time_limit for p in fleet(settings) if p.service.acks_late and p.time_limit]
    longest = max(limits, default=0)
    return longest + RETRY_COUNTDOWN_MAX + math.ceil(longest * 0.1)
