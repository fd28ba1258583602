"""Each service of the topology as the settings size it: its replicas, processes and pools.

The one place a service's plan is computed: the budget, ``--suggest``, a worker's child count
(``app.worker.lifecycle``), the start commands (``app.start_commands``), the Railway file and the docs
tables all read ``plan`` / ``fleet``. It reads the settings by the variable names the topology gives
(``<PREFIX>_DB_POOL_SIZE`` ...) and imports nothing from ``app.config``: the settings call it
(``Settings.pool()``), so it must sit below them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.topology import SERVICES, Service, service


class Sized(Protocol):
    """What a plan reads of the settings; the per-service variables are read by name (getattr)."""

    SERVICE_TYPE: str
    DB_POOL_SIZE: int
    DB_MAX_OVERFLOW: int
    LANGGRAPH_POOL_MAX_SIZE: int


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
