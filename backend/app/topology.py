"""Every service of the fleet, declared once.

A service is one Railway service (one ``SERVICE_TYPE``): an API or a Celery worker bound to one queue.
Each entry says what the rest of the code needs to know about it, and everything else reads it:

* the settings module generates each service's variables from it (process count, replicas, pool
  sizing, time limit) and the development profile's process counts;
* Celery builds its queues, routes and per-queue task options from it, and a worker takes its
  ``worker_concurrency`` from its service's setting, whatever command started it;
* ``python -m app.budget`` (model, guard, audit, ``--suggest``, ``--command``), the metric labels,
  ``.railway/railway.py``, the docs tables, the load harness and the tests iterate over it.

Adding a queue is one entry here plus its task module.

The variables of a service are named from its ``prefix``: ``<PREFIX>_REPLICAS``,
``<PREFIX>_DB_POOL_SIZE`` / ``<PREFIX>_DB_MAX_OVERFLOW`` (unset: the shared ``DB_POOL_SIZE`` /
``DB_MAX_OVERFLOW``), ``<PREFIX>_CONCURRENCY`` and ``<PREFIX>_TIME_LIMIT`` for a worker. The API keeps
the guide's ``UVICORN_WORKERS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from app.config.settings import Settings

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


# --- a service as the settings size it --------------------------------------------------------------


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


def pool_sizing(settings: Settings, name: str | None = None) -> PoolSizing:
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


def plan(settings: Settings, name: str) -> ServicePlan:
    spec = service(name)
    return ServicePlan(
        service=spec,
        replicas=getattr(settings, spec.replicas_var),
        processes=getattr(settings, spec.processes_var),
        pool=pool_sizing(settings, name),
        langgraph_max_size=settings.LANGGRAPH_POOL_MAX_SIZE if spec.checkpointer else 0,
        time_limit=getattr(settings, spec.time_limit_var) if spec.time_limit is not None else None,
    )


def fleet(settings: Settings) -> list[ServicePlan]:
    return [plan(settings, s.name) for s in SERVICES]


def start_command(settings: Settings, name: str, *, port: str = "8000", loglevel: str = "INFO") -> list[str]:
    """The command that starts one replica of ``name`` (uvicorn, or a Celery worker on its queue), its
    process count from settings.

    railway_entrypoint.sh execs exactly this (``python -m app.budget --command NAME``), so what the
    shell starts and what the budget counts cannot disagree. A worker started by any other command
    still gets its ``worker_concurrency`` from the same setting (app.core.celery_app).
    """
    p = plan(settings, name)
    if not p.service.is_worker:
        # uvicorn with a supervisor that refuses new connections at SIGTERM (app.api.server), and an HTTP
        # protocol that bounds what a connection holds before its request is read (app.api.http_protocol).
        return [
            "python", "-m", "app.api.server", "app.main:app", "--host", "0.0.0.0", "--port", port,
            "--workers", str(p.processes),
            "--http", "app.api.http_protocol:BoundedHttpToolsProtocol",
            "--timeout-keep-alive", str(settings.API_KEEP_ALIVE_SECONDS),
            "--timeout-graceful-shutdown", str(settings.api_graceful_shutdown_timeout),
        ]  # fmt: skip
    # Celery's SIGTERM is a warm shutdown that waits for every running task (up to its time limit, an
    # hour for a workflow); remapped to the cold one, it waits CELERY_SOFT_SHUTDOWN_TIMEOUT, then
    # hands the rest back. Read from the environment when Celery is imported, hence `env` here.
    return [
        "env", "REMAP_SIGTERM=SIGQUIT",
        "celery", "-A", "app.core.celery_app", "worker", f"--loglevel={loglevel}",
        f"--queues={p.service.queue}", f"--concurrency={p.processes}", f"--hostname={p.service.node}@%h",
    ]  # fmt: skip
