"""The Celery application (``celery -A app.core.celery_app worker --queues=<queue>``).

Queues, routes and per-queue task options come from ``app.topology``: one worker service per queue,
each with its own ``application_name``:

=====================  ===========================================  ===========================
queue                  tasks (routed by module)                     service / application_name
=====================  ===========================================  ===========================
``logs``               ``app.tasks.logs_tasks``                     ``<env>.celery_logs``
``content_generation`` ``app.tasks.content_generation_tasks``       ``<env>.celery_content``
``roadmap_workflow``   ``app.tasks.roadmap_workflow_tasks``         ``<env>.celery_workflow``
=====================  ===========================================  ===========================

Process model, and why it is safe with pools:

* the prefork **parent** never holds a database connection: it learns which service it is from
  ``--queues`` (or ``SERVICE_TYPE``) in ``celeryd_init``, before any child exists, and takes the
  service's budgeted child count as ``worker_concurrency``, so any start command runs the number of
  children the budget counts;
* each **child** (``worker_process_init``) names its service, gets one event loop that it keeps for its
  whole life, and builds its engine lazily on the first task that needs it, so no socket is ever
  shared across ``fork``; at ``worker_process_shutdown`` it disposes of the engine on that same loop.

Delivery: content and workflow tasks are acknowledged late and rejected (so redelivered) when their
child process dies, with prefetch 1 so a long task never sits behind another in a child's buffer. A
Redis restart does not end a worker (celery is held below 5.7, see pyproject.toml): running tasks
finish and are acknowledged on the new connection; the messages of a worker that died are handed out
again after the visibility timeout derived from the time limits (Settings.celery_visibility_timeout).
"""

from __future__ import annotations

import os
import ssl
import time
from typing import Any

import structlog
from celery import Celery, Task, signals
from kombu import Exchange, Queue

from app import topology
from app.config.settings import InvalidSettingsError, Settings, get_settings

log = structlog.get_logger("app.celery")
_SSL_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def _ssl_options(settings: Settings) -> dict[str, Any] | None:
    """``rediss://...?ssl_cert_reqs=required`` (the managed-Redis URL form) -> redis-py SSL options."""
    wanted = settings.redis_ssl_cert_reqs
    return None if wanted is None else {"ssl_cert_reqs": _SSL_REQS[wanted]}


class DatabaseTask(Task):
    """Retries a task whose database went away (restart, failover, network) instead of failing it.

    Only "unavailable" errors qualify (app.db.errors); a bug or a constraint violation fails as usual.
    The backoff (1, 2, 4, ... up to 30 s) rides out a managed failover.
    """

    abstract = True
    max_retries = 8

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from app.db.errors import is_database_unavailable

        try:
            return super().__call__(*args, **kwargs)
        except Exception as error:
            if not is_database_unavailable(error) or self.request.called_directly:
                raise
            delay = min(topology.RETRY_COUNTDOWN_MAX, 2 ** (self.request.retries or 0))
            log.warning(
                "task_database_unavailable_retrying", task=self.name, retry_in=delay, error=str(error)
            )
            raise self.retry(exc=error, countdown=delay) from None


def queue_options(queue: str, settings: Settings | None = None) -> dict[str, Any]:
    """Per-queue task options, derived from the queue's service in the topology and its settings."""
    settings = settings or get_settings()
    spec = topology.for_queue(queue)
    if spec is None:
        raise KeyError(f"unknown queue {queue!r}; queues: {', '.join(topology.QUEUES)}")
    hard = topology.plan(settings, spec.name).time_limit or 60
    return {
        "base": DatabaseTask,
        "time_limit": hard,
        "soft_time_limit": max(1, int(hard * 0.9)),
        # Late ack + reject on a dead child: a killed worker's task is redelivered, not lost.
        "acks_late": spec.acks_late,
        "reject_on_worker_lost": spec.acks_late,
    }


def create_celery(settings: Settings | None = None, *, set_as_current: bool = True) -> Celery:
    settings = settings or get_settings()
    url = settings.redis_url
    app = Celery(
        "roadmap",
        broker=url,
        backend=url,
        include=[s.task_module for s in topology.WORKERS if s.task_module],
        set_as_current=set_as_current,
    )
    exchange = Exchange("roadmap", type="direct")
    prefix = {"global_keyprefix": settings.REDIS_KEY_PREFIX} if settings.REDIS_KEY_PREFIX else {}
    app.conf.update(
        task_queues=[Queue(name, exchange, routing_key=name) for name in topology.QUEUES],
        task_default_exchange="roadmap",
        task_default_queue="logs",
        task_default_routing_key="logs",
        task_create_missing_queues=False,
        task_routes={
            f"{s.task_module}.*": {"queue": s.queue, "routing_key": s.queue}
            for s in topology.WORKERS
            if s.task_module
        },
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        # Nothing reads a task's result (progress lives in the database); storing them cost a Redis
        # write per task and tied publishing to the result backend. The probe tasks opt back in.
        task_ignore_result=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        # Recycle a child after many tasks: bounds slow leaks without touching the pool budget.
        worker_max_tasks_per_child=1000,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        # Publishing gives up within about a second when Redis is down, so the API answers 503
        # instead of hanging a request on the broker.
        broker_connection_timeout=2,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        redis_socket_connect_timeout=2,
        redis_socket_timeout=5,
        broker_transport_options={
            # Late-acknowledged messages of a worker that died are handed to another one after this
            # (Settings.celery_visibility_timeout: the longest acks_late time limit plus a margin).
            "visibility_timeout": settings.celery_visibility_timeout,
            # Look for such messages every 10 s (kombu's unacked_restore_interval), not every 10th
            # look (100 s): redelivery is then bounded by the timeout plus 10 s. One indexed range
            # query per worker parent, under kombu's mutex.
            "unacked_restore_throttle": 1,
            **prefix,
        },
        result_backend_transport_options=prefix,
        broker_use_ssl=_ssl_options(settings),
        redis_backend_use_ssl=_ssl_options(settings),
    )
    return app


celery_app = create_celery()
app = celery_app  # `celery -A app.core.celery_app` finds either name


# --- worker lifecycle ------------------------------------------------------------------------------

_worker_service: str | None = None


def service_for_queues(queues: str | list[str] | None, settings: Settings | None = None) -> str:
    """The worker service a worker is: from its one ``--queues`` entry, else from SERVICE_TYPE.

    A worker that would consume several queues, or any queue with no service named, is refused: its
    children would not be counted by any service's budget.
    """
    settings = settings or get_settings()
    names = queues.split(",") if isinstance(queues, str) else list(queues or [])
    names = [n.strip() for n in names if n.strip()]
    if len(names) == 1 and (spec := topology.for_queue(names[0])) is not None:
        return spec.name
    if not names and settings.SERVICE_TYPE in {s.name for s in topology.WORKERS}:
        return settings.SERVICE_TYPE
    raise InvalidSettingsError(
        f"a worker serves exactly one queue: pass --queues=<one of {', '.join(topology.QUEUES)}> or set "
        f"SERVICE_TYPE to one of {', '.join(s.name for s in topology.WORKERS)} (got --queues={queues!r}, "
        f"SERVICE_TYPE={settings.SERVICE_TYPE!r})"
    )


def _budgeted_concurrency(conf: Any, options: dict[str, Any], service: str, settings: Settings) -> None:
    """Run the number of children the budget counts, whatever command started the worker.

    Without ``--concurrency`` Celery would start one child per CPU; ``worker_concurrency`` set here,
    before the worker reads it, makes it the service's setting. An explicit, different
    ``--concurrency`` is the operator's choice but unbudgeted: refused in strict mode, logged in warn.
    """
    plan = topology.plan(settings, service)
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


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting to this signal stops Celery from installing its own handlers; structlog does it.
    from app.core.logging import configure_logging

    configure_logging(get_settings(), service=_worker_service)


@signals.celeryd_init.connect
def _on_worker_parent_init(conf: Any = None, options: dict[str, Any] | None = None, **_: Any) -> None:
    """In the parent, before the pool forks: learn the service and its child count. No pool here."""
    global _worker_service
    settings = get_settings()
    options = options or {}
    _worker_service = service_for_queues(options.get("queues"), settings)
    from app.core.logging import configure_logging

    configure_logging(settings, service=_worker_service, force=True)
    if conf is not None:
        _budgeted_concurrency(conf, options, _worker_service, settings)
    log.info("celery_worker_starting", worker_service=_worker_service)
    from app.budget.guard import enforce_budget

    enforce_budget(settings, _worker_service)  # skipped when railway_entrypoint.sh already checked
    port = settings.WORKER_METRICS_PORT
    if port:
        from app.core.metrics import serve_worker_metrics

        serve_worker_metrics(port)  # a thread of the parent only: it does not survive fork
        log.info("worker_metrics_serving", port=port)


@signals.celeryd_after_setup.connect
def _consume_only_the_service_queue(instance: Any = None, **_: Any) -> None:
    """Started without ``--queues`` (SERVICE_TYPE named the service): consume that service's queue only."""
    spec = topology.service(_worker_service) if _worker_service else None
    if instance is not None and spec is not None and spec.queue:
        queues = instance.app.amqp.queues
        if set(queues.consume_from or queues) != {spec.queue}:
            queues.select([spec.queue])


@signals.worker_process_init.connect
def _on_child_start(**_: Any) -> None:
    from app.core import async_runner
    from app.db import engine

    engine.set_service(_worker_service or get_settings().SERVICE_TYPE)
    async_runner.start_process_loop()


@signals.worker_process_shutdown.connect
def _on_child_stop(**_: Any) -> None:
    from app.core import async_runner
    from app.core.metrics import mark_this_process_dead
    from app.core.orchestrator_factory import OrchestratorFactory
    from app.db.engine import dispose_engine

    try:
        async_runner.run(OrchestratorFactory.close())
        async_runner.run(dispose_engine())
    finally:
        async_runner.stop_process_loop()
        mark_this_process_dead()


# --- task events -> the logs queue --------------------------------------------------------------------

_started: dict[str, float] = {}
_FLUSH_TASK = "app.tasks.logs_tasks.flush_task_events"


def _queue_of(task: Any) -> str | None:
    info = getattr(task.request, "delivery_info", None) or {}
    return info.get("routing_key") or getattr(task, "queue", None)


@signals.task_prerun.connect
def _on_task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None or task.name == _FLUSH_TASK:
        return
    from app.tasks import task_events

    _started[task_id or ""] = time.perf_counter()
    task_events.emit(
        "task_started",
        task_name=task.name,
        task_id=task_id,
        queue=_queue_of(task),
        attempt=(task.request.retries or 0) + 1,
        redelivered=bool((task.request.delivery_info or {}).get("redelivered")),
        pid=os.getpid(),
    )


@signals.task_postrun.connect
def _on_task_finished(
    task_id: str | None = None, task: Any = None, state: str | None = None, retval: Any = None, **_: Any
) -> None:
    if task is None or task.name == _FLUSH_TASK:
        return
    from app.tasks import task_events

    started = _started.pop(task_id or "", None)
    outcome = {"SUCCESS": "task_succeeded", "RETRY": "task_retried"}.get(state or "", "task_failed")
    extra = {"error": repr(retval)[:500]} if outcome == "task_failed" else {}
    task_events.emit(
        outcome,
        task_name=task.name,
        task_id=task_id,
        queue=_queue_of(task),
        level="error" if outcome == "task_failed" else "info",
        state=state,
        runtime_seconds=None if started is None else round(time.perf_counter() - started, 3),
        pid=os.getpid(),
        **extra,
    )
