"""The connection budget, computed from settings only: the one place every figure comes from.

Two ways of counting, side by side, because the difference is the point:

* **as the guide counts** — each Celery worker is ``1 parent + N children`` processes, each at
  ``DB_POOL_SIZE + DB_MAX_OVERFLOW``; the LangGraph pool is counted once at ``LANGGRAPH_POOL_MAX_SIZE``;
  the total adds the *estimated* peak (``DB_BUDGET_PEAK_FACTOR``, 60%), not the maximum. This
  reproduces the guide's tables (147 / 88 / 108 and 350 / 210 / 250).
* **what really opens connections** — prefork parents open none (tested), so only children count; the
  checkpointer pool is per process, and every workflow child that runs a graph opens one. This is the
  worst case the server can see, and what the start-up guard compares with ``DB_CONNECTION_BUDGET``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from app.config.settings import Settings


@dataclass(frozen=True)
class ServiceBudget:
    service: str  # api, celery_logs, ... (the <service> of application_name)
    guide_processes: int  # as the guide counts them (Celery: 1 parent + N children)
    real_processes: int  # processes that open connections (Celery: children only)
    per_process: int  # DB_POOL_SIZE + DB_MAX_OVERFLOW
    langgraph_per_process: int = 0  # checkpointer pool max_size in each process that runs graphs

    @property
    def guide_total(self) -> int:
        return self.guide_processes * self.per_process

    @property
    def real_sqlalchemy(self) -> int:
        return self.real_processes * self.per_process

    @property
    def real_langgraph(self) -> int:
        return self.real_processes * self.langgraph_per_process

    @property
    def real_total(self) -> int:
        """The most connections this service's processes can hold at once."""
        return self.real_sqlalchemy + self.real_langgraph


@dataclass(frozen=True)
class Budget:
    environment: str
    allocation: int
    admin_reserve: int
    peak_factor: float
    langgraph_max_size: int
    services: list[ServiceBudget] = field(default_factory=list)

    # -- as the guide counts -------------------------------------------------------------------------
    @property
    def guide_processes(self) -> int:
        return sum(s.guide_processes for s in self.services)

    @property
    def sqlalchemy_theoretical(self) -> int:
        return sum(s.guide_total for s in self.services)

    @property
    def estimated_peak(self) -> int:
        return round(self.sqlalchemy_theoretical * self.peak_factor)

    @property
    def guide_total(self) -> int:
        """The guide's "total": estimated peak + LangGraph pool + admin reserve."""
        return self.estimated_peak + self.langgraph_max_size + self.admin_reserve

    @property
    def guide_theoretical_total(self) -> int:
        """The guide's own figures at full load instead of at 60%."""
        return self.sqlalchemy_theoretical + self.langgraph_max_size + self.admin_reserve

    # -- what really opens connections -------------------------------------------------------------
    @property
    def worst_case(self) -> int:
        return sum(s.real_total for s in self.services) + self.admin_reserve

    @property
    def overrun(self) -> int:
        """How far the worst case exceeds the allocation (0 when it fits)."""
        return max(0, self.worst_case - self.allocation)

    @property
    def pgbouncer_max_db_connections(self) -> int:
        """PgBouncer's hard cap on server connections to the database: the allocation less the admin
        reserve (admins connect to PostgreSQL directly, not through PgBouncer)."""
        return self.allocation - self.admin_reserve

    def service(self, name: str) -> ServiceBudget:
        return next(s for s in self.services if s.service == name)


def budget_from_settings(settings: Settings) -> Budget:
    per_process = settings.db_pool_max_connections
    return Budget(
        environment=settings.ENVIRONMENT,
        allocation=settings.DB_CONNECTION_BUDGET,
        admin_reserve=settings.DB_ADMIN_RESERVE,
        peak_factor=settings.DB_BUDGET_PEAK_FACTOR,
        langgraph_max_size=settings.LANGGRAPH_POOL_MAX_SIZE,
        services=[
            ServiceBudget("api", settings.UVICORN_WORKERS, settings.UVICORN_WORKERS, per_process),
            ServiceBudget(
                "celery_logs",
                settings.CELERY_LOGS_CONCURRENCY + 1,
                settings.CELERY_LOGS_CONCURRENCY,
                per_process,
            ),
            ServiceBudget(
                "celery_content",
                settings.CELERY_CONTENT_CONCURRENCY + 1,
                settings.CELERY_CONTENT_CONCURRENCY,
                per_process,
            ),
            ServiceBudget(
                "celery_workflow",
                settings.CELERY_WORKFLOW_CONCURRENCY + 1,
                settings.CELERY_WORKFLOW_CONCURRENCY,
                per_process,
                langgraph_per_process=settings.LANGGRAPH_POOL_MAX_SIZE,
            ),
        ],
    )


# The variables that move the worst case, named in the guard's message.
BUDGET_VARIABLES = (
    "UVICORN_WORKERS",
    "CELERY_LOGS_CONCURRENCY",
    "CELERY_CONTENT_CONCURRENCY",
    "CELERY_WORKFLOW_CONCURRENCY",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "LANGGRAPH_POOL_MAX_SIZE",
)


@dataclass(frozen=True)
class Suggestion:
    pool_size: int
    max_overflow: int
    langgraph_max_size: int
    worst_case: int
    allocation: int

    def env(self) -> dict[str, int]:
        return {
            "DB_POOL_SIZE": self.pool_size,
            "DB_MAX_OVERFLOW": self.max_overflow,
            "LANGGRAPH_POOL_MAX_SIZE": self.langgraph_max_size,
        }


def suggest(settings: Settings, *, langgraph_per_child: int | None = None) -> Suggestion | None:
    """Pool sizes that make the worst case of this topology (its process counts) fit the allocation.

    A workflow child runs one graph at a time, so it needs few checkpointer connections: 2 by default
    (one for the step's writes, one for a concurrent read). What is left after the admin reserve and
    the checkpointer is shared equally per process, split about 60 / 40 between pool_size and
    max_overflow (persistent connections for the steady state, overflow for bursts). None when even
    one connection per process does not fit.
    """
    budget = budget_from_settings(settings)
    langgraph = langgraph_per_child or min(2, settings.LANGGRAPH_POOL_MAX_SIZE)
    langgraph = max(langgraph, settings.LANGGRAPH_POOL_MIN_SIZE, 1)
    processes = sum(s.real_processes for s in budget.services)
    workflow = budget.service("celery_workflow").real_processes
    room = budget.allocation - budget.admin_reserve - workflow * langgraph
    per_process = room // processes if processes else 0
    if per_process < 1:
        return None
    pool_size = max(1, math.ceil(per_process * 0.6))
    max_overflow = per_process - pool_size
    worst = processes * per_process + workflow * langgraph + budget.admin_reserve
    return Suggestion(pool_size, max_overflow, langgraph, worst, budget.allocation)
