"""The connection budget, computed from settings and the topology: the one place every figure comes from.

Two ways of counting, side by side, because the difference is the point:

* **as the guide counts**: each Celery worker is ``1 parent + N children`` processes, each at its
  pool's ``pool_size + max_overflow``; the LangGraph pool is counted once at ``LANGGRAPH_POOL_MAX_SIZE``;
  the total adds the *estimated* peak (``DB_BUDGET_PEAK_FACTOR``, the guide's 60%), not the maximum.
  This reproduces the guide's tables (147 / 88 / 108 and 350 / 210 / 250).
* **what really opens connections**: prefork parents open none (tested), so only children count; the
  checkpointer pool is per process, and every workflow child that runs a graph opens one; every
  replica brings all of its processes' pools. This is the worst case the server can see, and what the
  start-up guard compares with ``DB_CONNECTION_BUDGET`` and with what the server accepts.

A fleet that stands still is not the worst moment. A rolling deploy (Railway's, and most platforms')
starts a service's new deployment beside the old one and stops the old one only after the new one is
healthy, the overlap and the drain: for that window the service's pools exist twice, and a push that
redeploys every service doubles the fleet. ``DB_BUDGET_DEPLOY_CASE`` says which window the budget
plans for (``DeployCase``), and every check (the guard, ``--json``, ``--suggest``) holds the steady
state and that window to the same ceilings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from app import sizing, topology
from app.config.settings import Settings
from app.sizing import PoolSizing, ServicePlan
from app.topology import DEPLOY_CASES, DeployCase


@dataclass(frozen=True)
class ServerLimits:
    """What the PostgreSQL server itself allows (``SHOW max_connections`` and the reserved slots)."""

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int = 0  # PostgreSQL 16+: slots for pg_use_reserved_connections
    # The CONNECTION LIMITs of the instance's other databases (another environment's cap, applied by
    # its own ``python -m app.budget --apply-cap``): slots this environment must leave to them.
    others: int = 0

    @property
    def usable(self) -> int:
        """Connections an ordinary role can open: the application's ceiling, whatever its allocation."""
        return self.max_connections - self.superuser_reserved_connections - self.reserved_connections

    @property
    def available(self) -> int:
        """What this environment may count on: the usable slots less the other environments' caps."""
        return self.usable - self.others

    def describe(self) -> str:
        reserved = f"superuser_reserved_connections {self.superuser_reserved_connections}"
        if self.reserved_connections:
            reserved += f" - reserved_connections {self.reserved_connections}"
        if self.others:
            reserved += f" - other databases' caps {self.others}"
        return f"{self.available} (max_connections {self.max_connections} - {reserved})"


@dataclass(frozen=True)
class DeployWindow:
    """The most connections at the worst moment of one kind of deploy, admin reserve included."""

    case: DeployCase
    worst_case: int
    service: str | None  # the service whose redeploy is that moment (one_service), else None

    def as_dict(self) -> dict[str, Any]:
        return {"case": self.case, "worst_case": self.worst_case, "service": self.service}


def deploy_window(totals: dict[str, int], admin_reserve: int, case: DeployCase) -> DeployWindow:
    """``totals``: each service's most connections (replicas included) in the steady state.

    While a service redeploys, its old deployment holds its pools until SIGKILL at the latest and the
    new one opens its own: the service counts twice. Prestart's migration connections come out of the
    admin reserve, like any tool's.
    """
    steady = sum(totals.values()) + admin_reserve
    if case == "none" or not totals:
        return DeployWindow(case, steady, None)
    if case == "all_services":
        return DeployWindow(case, steady + sum(totals.values()), None)
    service = max(totals, key=lambda name: totals[name])
    return DeployWindow(case, steady + totals[service], service)


def _service_row(plan: ServicePlan) -> dict[str, Any]:
    """One service in the --json outputs (the budget and --suggest share the shape)."""
    return {
        "service": plan.name,
        "replicas": plan.replicas,
        "processes": plan.processes,
        "per_process": plan.per_process,
        "pool_size": plan.pool.pool_size,
        "max_overflow": plan.pool.max_overflow,
        "langgraph": plan.langgraph_max_size,
        "max_connections": plan.max_connections,
    }


def guide_processes(plan: ServicePlan) -> int:
    """As the guide counts them: a Celery worker is 1 parent + N children, per replica."""
    parent = 1 if plan.service.is_worker else 0
    return plan.replicas * (plan.processes + parent)


@dataclass(frozen=True)
class Budget:
    environment: str
    allocation: int
    admin_reserve: int
    peak_factor: float
    langgraph_max_size: int
    services: list[ServicePlan] = field(default_factory=list)
    server: ServerLimits | None = None
    deploy_case: DeployCase = "one_service"

    # -- as the guide counts -------------------------------------------------------------------------
    @property
    def guide_processes(self) -> int:
        return sum(guide_processes(s) for s in self.services)

    @property
    def sqlalchemy_theoretical(self) -> int:
        return sum(guide_processes(s) * s.per_process for s in self.services)

    @property
    def estimated_peak(self) -> int:
        return round(self.sqlalchemy_theoretical * self.peak_factor)

    @property
    def guide_total(self) -> int:
        """The guide's "total": estimated peak + LangGraph pool + admin reserve."""
        return self.estimated_peak + self.langgraph_max_size + self.admin_reserve

    @property
    def guide_theoretical_total(self) -> int:
        """The guide's own figures at full load instead of at the estimated peak."""
        return self.sqlalchemy_theoretical + self.langgraph_max_size + self.admin_reserve

    # -- what really opens connections -------------------------------------------------------------
    @property
    def worst_case(self) -> int:
        """The steady state: every process of every replica at its pools' maximum."""
        return sum(s.max_connections for s in self.services) + self.admin_reserve

    def window(self, case: DeployCase) -> DeployWindow:
        return deploy_window({s.name: s.max_connections for s in self.services}, self.admin_reserve, case)

    @property
    def deploy(self) -> DeployWindow:
        """The deploy window the budget plans for (``DB_BUDGET_DEPLOY_CASE``)."""
        return self.window(self.deploy_case)

    @property
    def peak(self) -> int:
        """The most the fleet can hold at any moment it plans for: the planned deploy window."""
        return max(self.worst_case, self.deploy.worst_case)

    @property
    def overrun(self) -> int:
        """How far the peak exceeds the allocation (0 when it fits)."""
        return max(0, self.peak - self.allocation)

    @property
    def server_overrun(self) -> int:
        """How far the peak exceeds what the server leaves this environment (0 when it fits or is
        unknown)."""
        return 0 if self.server is None else max(0, self.peak - self.server.available)

    @property
    def steady_fits(self) -> bool:
        return self.worst_case <= self.ceiling

    @property
    def ceiling(self) -> int:
        """The lower of the allocation and what the server leaves this environment (when known)."""
        return self.allocation if self.server is None else min(self.allocation, self.server.available)

    @property
    def fits(self) -> bool:
        return self.overrun == 0 and self.server_overrun == 0

    @property
    def pgbouncer_max_db_connections(self) -> int:
        """PgBouncer's hard cap on server connections to the database: the allocation less the admin
        reserve (admins connect to PostgreSQL directly, not through PgBouncer)."""
        return self.allocation - self.admin_reserve

    def service(self, name: str) -> ServicePlan:
        return next(s for s in self.services if s.name == name)

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable form (``python -m app.budget --json``), a deploy gate's input."""
        return {
            "environment": self.environment,
            "allocation": self.allocation,
            "admin_reserve": self.admin_reserve,
            "worst_case": self.worst_case,
            "fits": self.fits,
            "steady": {"worst_case": self.worst_case, "fits": self.steady_fits},
            "deploy": {
                **self.deploy.as_dict(),
                "fits": self.deploy.worst_case <= self.ceiling,
                **{case: self.window(case).as_dict() for case in DEPLOY_CASES if case != "none"},
            },
            "server": None
            if self.server is None
            else {
                "max_connections": self.server.max_connections,
                "superuser_reserved_connections": self.server.superuser_reserved_connections,
                "usable": self.server.usable,
                "other_caps": self.server.others,
                "available": self.server.available,
            },
            "services": [_service_row(s) for s in self.services],
        }


def budget_from_settings(settings: Settings, server: ServerLimits | None = None) -> Budget:
    return Budget(
        environment=settings.ENVIRONMENT,
        allocation=settings.DB_CONNECTION_BUDGET,
        admin_reserve=settings.DB_ADMIN_RESERVE,
        peak_factor=settings.DB_BUDGET_PEAK_FACTOR,
        langgraph_max_size=settings.LANGGRAPH_POOL_MAX_SIZE,
        services=sizing.fleet(settings),
        server=server,
        deploy_case=settings.DB_BUDGET_DEPLOY_CASE,
    )


def budget_variables() -> list[str]:
    """The variables that move the worst case, named in the guard's message."""
    names: list[str] = []
    for spec in topology.SERVICES:
        names += [spec.replicas_var, spec.processes_var]
    return [*names, "DB_POOL_SIZE", "DB_MAX_OVERFLOW", "<PREFIX>_DB_POOL_SIZE", "LANGGRAPH_POOL_MAX_SIZE"]


# --- --suggest: pool sizes for what each service really does -----------------------------------------

# A checkpointer pool for one graph at a time: the step's checkpoint write plus one concurrent read.
LANGGRAPH_PER_GRAPH = 2
# Below this a request-serving or fan-out process would serialise its own work on one connection.
ELASTIC_MINIMUM = 2


@dataclass(frozen=True)
class SuggestedService:
    """A service's plan with the suggested pools, and why."""

    plan: ServicePlan
    reason: str

    @property
    def service(self) -> str:
        return self.plan.name

    @property
    def max_connections(self) -> int:
        return self.plan.max_connections


@dataclass(frozen=True)
class Suggestion:
    environment: str
    allocation: int
    admin_reserve: int
    services: list[SuggestedService]
    deploy_case: DeployCase = "one_service"
    # What the server leaves this environment, when it could be read; None: the allocation alone.
    server: ServerLimits | None = None
    server_error: str | None = None  # why the server's limits are unknown, when they were asked for
    advice: str | None = None  # when nothing fits: which replica or process count to lower

    @property
    def worst_case(self) -> int:
        """The steady state of the suggested pools."""
        return sum(s.max_connections for s in self.services) + self.admin_reserve

    @property
    def deploy(self) -> DeployWindow:
        return deploy_window({s.service: s.max_connections for s in self.services}, self.admin_reserve,
                             self.deploy_case)  # fmt: skip

    @property
    def ceiling(self) -> int:
        return self.allocation if self.server is None else min(self.allocation, self.server.available)

    @property
    def fits(self) -> bool:
        return self.advice is None and max(self.worst_case, self.deploy.worst_case) <= self.ceiling

    def env(self) -> dict[str, int]:
        values: dict[str, int] = {}
        for s in self.services:
            spec = s.plan.service
            values[spec.pool_size_var] = s.plan.pool.pool_size
            values[spec.max_overflow_var] = s.plan.pool.max_overflow
        langgraph = [s.plan.langgraph_max_size for s in self.services if s.plan.langgraph_max_size]
        if langgraph:
            values["LANGGRAPH_POOL_MAX_SIZE"] = max(langgraph)
        return values

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "allocation": self.allocation,
            "admin_reserve": self.admin_reserve,
            "ceiling": self.ceiling,
            "server": None
            if self.server is None
            else {
                "usable": self.server.usable,
                "other_caps": self.server.others,
                "available": self.server.available,
            },
            "server_error": self.server_error,
            "worst_case": self.worst_case,
            "steady": {"worst_case": self.worst_case, "fits": self.worst_case <= self.ceiling},
            "deploy": {**self.deploy.as_dict(), "fits": self.deploy.worst_case <= self.ceiling},
            "fits": self.fits,
            "advice": self.advice,
            "env": self.env(),
            "services": [{**_service_row(s.plan), "reason": s.reason} for s in self.services],
        }


def _split(per_process: int, like: PoolSizing) -> PoolSizing:
    """Keep the configured split when the size is unchanged; otherwise about 60% persistent."""
    if per_process == like.max_connections:
        return like
    pool_size = max(1, math.ceil(per_process * 0.6))
    return PoolSizing(pool_size, per_process - pool_size)


def _want(plan: ServicePlan, settings: Settings) -> int:
    """Connections one process of the service can use, at most."""
    shared = PoolSizing(settings.DB_POOL_SIZE, settings.DB_MAX_OVERFLOW).max_connections
    role = plan.service.role
    if role == "one_task":
        return 2
    if role == "fan_out":
        return max(ELASTIC_MINIMUM, min(shared, settings.CONCEPT_CONCURRENCY_LIMIT))
    return max(ELASTIC_MINIMUM, shared)


def _reason(plan: ServicePlan, pool: PoolSizing, langgraph: int, settings: Settings) -> str:
    unit = "uvicorn workers" if not plan.service.is_worker else "children"
    head = f"{plan.replicas} x {plan.processes} {unit}, {pool.pool_size} + {pool.max_overflow} each: "
    role = plan.service.role
    if role == "requests" and plan.service.fixed_pool:
        why = "concurrent requests share a worker's pool, kept open (a fixed size does not churn under load)"
    elif role == "requests":
        why = "concurrent requests share a worker's pool; the overflow absorbs bursts"
    elif role == "fan_out":
        why = (
            f"one task at a time, but it gathers {settings.CONCEPT_CONCURRENCY_LIMIT} concepts at once, "
            "each checking out short sessions"
        )
    else:
        why = "one task at a time and one session at a time; the overflow covers a nested checkout"
    if langgraph:
        why += f"; LangGraph {langgraph}: one graph at a time (a checkpoint write and a concurrent read)"
    return head + why


def _minimum(plan: ServicePlan, langgraph: int) -> int:
    per = 2 if plan.service.role == "one_task" else ELASTIC_MINIMUM
    return plan.total_processes * (per + langgraph)


def _advice(
    plans: list[ServicePlan], langgraph: int, ceiling: int, admin_reserve: int, case: DeployCase
) -> str:
    """Which replica count to lower (the smallest change that fits), else the process counts."""
    need = {p.name: _minimum(p, langgraph if p.service.checkpointer else 0) for p in plans}

    def fits(totals: dict[str, int]) -> bool:
        return deploy_window(totals, admin_reserve, case).worst_case <= ceiling

    for p in sorted(plans, key=lambda p: need[p.name], reverse=True):
        per_replica = need[p.name] // p.replicas
        for replicas in range(p.replicas - 1, 0, -1):
            if fits({**need, p.name: per_replica * replicas}):
                return f"lower {p.service.replicas_var} from {p.replicas} to {replicas}"
    names = ", ".join(p.service.processes_var for p in plans)
    smallest = deploy_window(need, admin_reserve, case).worst_case
    return (
        f"even at the smallest pools ({smallest} > {ceiling}) nothing fits: "
        f"lower the replica or process counts ({names})"
    )


def _sized(plans: list[ServicePlan], settings: Settings, langgraph: int, cap: int) -> list[SuggestedService]:
    """Every service's pools when each process of an elastic service may hold ``cap`` connections."""
    shared = PoolSizing(settings.DB_POOL_SIZE, settings.DB_MAX_OVERFLOW)
    services = []
    for p in plans:
        if p.service.role == "one_task":
            pool = PoolSizing(1, 1)
        elif p.service.fixed_pool:
            # All persistent: no overflow connection opened and closed per burst.
            pool = PoolSizing(min(_want(p, settings), cap), 0)
        else:
            pool = _split(min(_want(p, settings), cap), shared)
        graph = langgraph if p.service.checkpointer else 0
        services.append(
            SuggestedService(
                replace(p, pool=pool, langgraph_max_size=graph), _reason(p, pool, graph, settings)
            )
        )
    return services


def suggest(
    settings: Settings, server: ServerLimits | None = None, server_error: str | None = None
) -> Suggestion:
    """Pool sizes, per service, that make this topology (its replicas and process counts) fit both the
    steady state and the deploy window ``DB_BUDGET_DEPLOY_CASE`` plans for, within the allocation and,
    when ``server`` is known, what the server leaves this environment.

    A process that runs one task at a time gets 1 + 1; the checkpointer pool of a workflow child gets
    what one graph needs. The services whose processes do concurrent work (the API's requests, a
    content task's gather) get the largest equal per-process share, up to what each can use, that
    still fits.
    """
    plans = sizing.fleet(settings)
    langgraph = max(
        min(LANGGRAPH_PER_GRAPH, settings.LANGGRAPH_POOL_MAX_SIZE), settings.LANGGRAPH_POOL_MIN_SIZE, 1
    )
    found = Suggestion(
        settings.ENVIRONMENT, settings.DB_CONNECTION_BUDGET, settings.DB_ADMIN_RESERVE, [],
        settings.DB_BUDGET_DEPLOY_CASE, server, server_error,
    )  # fmt: skip
    largest = max(_want(p, settings) for p in plans)
    # The window grows with the share, but not linearly (the service that counts twice can change):
    # try each share from the largest down, and keep the first that fits.
    for cap in range(largest, ELASTIC_MINIMUM - 1, -1):
        candidate = replace(found, services=_sized(plans, settings, langgraph, cap))
        if candidate.fits:
            return candidate
    advice = _advice(
        plans, langgraph, found.ceiling, settings.DB_ADMIN_RESERVE, settings.DB_BUDGET_DEPLOY_CASE
    )
    return replace(found, services=_sized(plans, settings, langgraph, ELASTIC_MINIMUM), advice=advice)
