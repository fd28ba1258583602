"""Every service of the fleet, declared once, as plain data: nothing here imports from ``app``.

A service is one Railway service (one ``SERVICE_TYPE``): an API or a Celery worker bound to one queue.
Each entry says what the rest of the code needs to know about it, and everything else reads it
(``app.sizing`` turns an entry and the settings into the service's plan):

* the settings name each service's variables after it (``app.config.services``: process count,
  replicas, pool sizing, time limit; a test keeps them equal) and take the development profile's
  process counts from it;
* Celery builds its queues, routes and per-queue task options from it, and a worker takes its
  ``worker_concurrency`` from its service's setting, whatever command started it;
* ``python -m app.budget`` (model, guard, audit, ``--suggest``), ``app.start_commands``, the metric
  labels, ``.railway/railway.py``, the docs tables, the load harness and the tests iterate over it.

Adding a queue is one entry here plus its task module.

The variables of a service are named from its ``prefix``: ``<PREFIX>_REPLICAS``,
``<PREFIX>_DB_POOL_SIZE`` / ``<PREFIX>_DB_MAX_OVERFLOW`` (unset: the shared ``DB_POOL_SIZE`` /
``DB_MAX_OVERFLOW``), ``<PREFIX>_CONCURRENCY`` and ``<PREFIX>_TIME_LIMIT`` for a worker. The API keeps
the guide's ``UVICORN_WORKERS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Profile = Literal["production", "development"]
# How the fleet is redeployed, for the budget's deploy window (DB_BUDGET_DEPLOY_CASE):
#   none: no overlap (a platform that stops the old deployment before starting the new one);
#   one_service: services redeploy one at a time, so one service's pools exist twice;
#   all_services: one push redeploys every service at once, so the whole fleet exists twice.
DeployCase = Literal["none", "one_service", "all_services"]
DEPLOY_CASES: tuple[DeployCase, ...] = ("none", "one_service", "all_services")
# The longest countdown of a task's own retry (DatabaseTask's backoff cap). A worker holds a message
# unacknowledged until its countdown is due, so the broker's visibility timeout must cover it too.
RETRY_COUNTDOWN_MAX = 30
# The migration step (prestart, Alembic) connects under this name but is no service of the fleet: a
# migration may rightly run for minutes (an index build), so its connections carry no statement deadline.
MIGRATE = "migrate"
# How one process of the service uses its pool; --suggest sizes pools from it.
#   requests: concurrent HTTP requests share the process's pool;
#   one_task: a prefork child runs one task at a time and holds one session at a time;
#   fan_out:  one task at a time, but the task gathers concurrent work that checks out sessions.
Role = Literal["requests", "one_task", "fan_out"]


@dataclass(frozen=True)
class Service:
    name: str  # SERVICE_TYPE, the <service> of application_name, the metric label
    prefix: str  # of the service's variables
    processes: dict[Profile, int]  # default process count per environment profile
    role: Role
    title: str  # for tables: what runs
    queue: str | None = None  # the Celery queue it consumes; None for the HTTP API
    task_module: str | None = None
    time_limit: int | None = None  # default hard time limit of its tasks, seconds
    checkpointer: bool = False  # opens a LangGraph checkpointer pool in each process
    # Acknowledged after the task ran, and redelivered when its child dies: a lost message would
    # leave a roadmap unfinished. Early ack where redelivery buys nothing.
    acks_late: bool = True
    # A fixed-size pool by default (the shared pool_size + max_overflow, all persistent), the way
    # HikariCP recommends: under sustained concurrency around pool_size, QueuePool closes each overflow
    # connection as it is returned and opens another for the next burst (a connect, TLS and auth per
    # churn). The budget is the same; only the idle connections differ.
    fixed_pool: bool = False
    processes_variable: str | None = None  # default <PREFIX>_CONCURRENCY
    # Replicas of the service (Railway scales a service horizontally; each replica brings all its
    # processes' pools). .railway/railway.py takes numReplicas from here, so raise it here
    # and regenerate; <PREFIX>_REPLICAS overrides it for the budget alone (what-if, other platforms).
    replicas: int = 1

    @property
    def is_worker(self) -> bool:
        return self.queue is not None

    @property
    def processes_var(self) -> str:
        return self.processes_variable or f"{self.prefix}_CONCURRENCY"

    @property
    def replicas_var(self) -> str:
        return f"{self.prefix}_REPLICAS"

    @property
    def pool_size_var(self) -> str:
        return f"{self.prefix}_DB_POOL_SIZE"

    @property
    def max_overflow_var(self) -> str:
        return f"{self.prefix}_DB_MAX_OVERFLOW"

    @property
    def time_limit_var(self) -> str:
        return f"{self.prefix}_TIME_LIMIT"

    @property
    def node(self) -> str:
        """Celery node name prefix (``--hostname=<node>@%h``)."""
        return self.name.removeprefix("celery_")


SERVICES: tuple[Service, ...] = (
    Service(
        name="api",
        prefix="API",
        processes={"production": 8, "development": 4},
        role="requests",
        title="FastAPI API (`uvicorn --workers {n}`)",
        processes_variable="UVICORN_WORKERS",
        fixed_pool=True,
    ),
    Service(
        name="celery_logs",
        prefix="CELERY_LOGS",
        processes={"production": 8, "development": 4},
        role="one_task",
        title="Celery `logs`",
        queue="logs",
        task_module="app.tasks.logs_tasks",
        time_limit=120,
        # Its flush is at-least-once through the Redis buffer already.
        acks_late=False,
    ),
    Service(
        name="celery_content",
        prefix="CELERY_CONTENT",
        processes={"production": 10, "development": 6},
        role="fan_out",
        title="Celery `content_generation`",
        queue="content_generation",
        task_module="app.tasks.content_generation_tasks",
        time_limit=900,
    ),
    Service(
        name="celery_workflow",
        prefix="CELERY_WORKFLOW",
        processes={"production": 6, "development": 4},
        role="one_task",
        title="Celery `roadmap_workflow`",
        queue="roadmap_workflow",
        task_module="app.tasks.roadmap_workflow_tasks",
        time_limit=3600,
        checkpointer=True,
    ),
)

NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
WORKERS: tuple[Service, ...] = tuple(s for s in SERVICES if s.is_worker)
QUEUES: tuple[str, ...] = tuple(s.queue for s in WORKERS if s.queue)


def service(name: str) -> Service:
    for candidate in SERVICES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"unknown service {name!r}; valid values: {', '.join(NAMES)}")


def for_queue(queue: str) -> Service | None:
    return next((s for s in WORKERS if s.queue == queue), None)
