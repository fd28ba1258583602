"""A worker's process model, and why it is safe with pools.

* The prefork **parent** never holds a database connection. In ``celeryd_init``, before any child
  exists, it learns which service it is from ``--queues`` (or ``SERVICE_TYPE``), names it on the
  process runtime (the children inherit the name, not a socket), takes the service's budgeted child
  count as ``worker_concurrency`` (so any start command runs the number of children the budget
  counts), runs the budget guard once and serves the worker's metrics.
* Each **child** inherits no resource: ``app.runtime`` forgets them at fork. It builds its engine, its
  Redis clients and (workflow workers) its checkpointer pool on first use, runs every task on one
  event loop, publishes its checkpointer gauges after each task, and at ``worker_process_shutdown``
  closes everything on that same loop.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import signals

from app import runtime, sizing, topology
from app.budget.guard import enforce_budget
from app.config.loading import InvalidSettingsError
from app.config.settings import Settings, get_settings
from app.core.checkpointer_metrics import publish_checkpointer_metrics
from app.core.logging import configure_logging
from app.core.metrics import mark_this_process_dead, serve_worker_metrics
from app.core.orchestrator_factory import checkpointer_stats

log = structlog.get_logger("app.celery")
WORKER_SERVICES = {s.name for s in topology.WORKERS}


def service_for_queues(queues: str | list[str] | None, settings: Settings) -> str:
    """The worker service a worker is: from its one ``--queues`` entry, else from SERVICE_TYPE.

    A worker that would consume several queues, or any queue with no service named, is refused: its
    children would not be counted by any service's budget.
    """
    names = queues.split(",") if isinstance(queues, str) else list(queues or [])
    names = [n.strip() for n in names if n.strip()]
    if len(names) == 1 and (spec := topology.for_queue(names[0])) is not None:
        return spec.name
    if not names and settings.SERVICE_TYPE in WORKER_SERVICES:
        return settings.SERVICE_TYPE
    raise InvalidSettingsError(
        f"a worker serves exactly one queue: pass --queues=<one of {', '.join(topology.QUEUES)}> or set "
        f"SERVICE_TYPE to one of {', '.join(sorted(WORKER_SERVICES))} (got --queues={queues!r}, "
        f"SERVICE_TYPE={settings.SERVICE_TYPE!r})"
    )


def budgeted_concurrency(conf: Any, options: dict[str, Any], service: str, settings: Settings) -> None:
    """Run the number of children the budget counts, whatever command started the worker.

    Without ``--concurrency`` Celery would start one child per CPU; ``worker_concurrency`` set here,
    before the worker reads it, makes it the service's setting. An explicit, different
    ``--concurrency`` is the operator's choice but unbudgeted: refused in strict mode, logged in warn.
    """
    plan = sizing.plan(settings, service)
    conf.worker_concurrency = plan.processes
    given = options.get("concurrency")
    if given not in (None, 0) and str(given) != str(plan.processes):  # 'auto' included: one per CPU
        message = (
            f"--concurrency={given} differs from {plan.service.processes_var}={plan.processes}, the count "
            f"the connection budget uses; set {plan.service.processes_var} instead of the flag"
        )
        if settings.DB_BUDGET_ENFORCEMENT == "strict":
            raise InvalidSettingsError(message)
        if settings.DB_BUDGET_ENFORCEMENT == "warn":
            log.warning("celery_concurrency_not_budgeted", detail=message)


def _named_service() -> str | None:
    service = runtime.current().service
    return service if service in WORKER_SERVICES else None


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting to this signal stops Celery from installing its own handlers; structlog does it.
    configure_logging(get_settings(), service=_named_service())


@signals.celeryd_init.connect
def _on_worker_parent_init(conf: Any = None, options: dict[str, Any] | None = None, **_: Any) -> None:
    """In the parent, before the pool forks: learn the service and its child count. No pool here."""
    settings = get_settings()
    options = options or {}
    service = service_for_queues(options.get("queues"), settings)
    runtime.current().name_service(service)
    configure_logging(settings, service=service, force=True)
    if conf is not None:
        budgeted_concurrency(conf, options, service, settings)
    log.info("celery_worker_starting", worker_service=service)
    if not settings.DB_BUDGET_CHECKED:  # railway_entrypoint.sh checked it already
        enforce_budget(settings, service)
    if settings.WORKER_METRICS_PORT:
        serve_worker_metrics(settings.WORKER_METRICS_PORT)  # a thread of the parent: gone after fork
        log.info("worker_metrics_serving", port=settings.WORKER_METRICS_PORT)


@signals.celeryd_after_setup.connect
def _consume_only_the_service_queue(instance: Any = None, **_: Any) -> None:
    """Started without ``--queues`` (SERVICE_TYPE named the service): consume that service's queue only."""
    service = _named_service()
    spec = topology.service(service) if service else None
    if instance is not None and spec is not None and spec.queue:
        queues = instance.app.amqp.queues
        if set(queues.consume_from or queues) != {spec.queue}:
            queues.select([spec.queue])


@signals.task_postrun.connect
def _publish_checkpointer_gauges(**_: Any) -> None:
    publish_checkpointer_metrics(checkpointer_stats(), runtime.current().service)


@signals.worker_process_shutdown.connect
def _on_child_stop(**_: Any) -> None:
    try:
        runtime.current().shutdown()
    finally:
        mark_this_process_dead()
