"""The Celery application (``celery -A app.core.celery_app worker --queues=... --concurrency=N``).

Three queues, declared explicitly, each served by its own worker deployment:

=====================  ===========================================  ===========================
queue                  tasks (routed by module)                     service / application_name
=====================  ===========================================  ===========================
``logs``               ``app.tasks.logs_tasks``                     ``<env>.celery_logs``
``content_generation`` ``app.tasks.content_generation_tasks``       ``<env>.celery_content``
``roadmap_workflow``   ``app.tasks.roadmap_workflow_tasks``         ``<env>.celery_workflow``
=====================  ===========================================  ===========================

Process model, and why it is safe with pools:

* the prefork **parent** never opens a database connection: it only reads its ``--queues`` option to
  learn which service it is (``celeryd_init``), before any child exists;
* each **child** (``worker_process_init``) names its service, gets one event loop that it keeps for its
  whole life, and builds its engine lazily on the first task that needs it, so no socket is ever
  shared across ``fork``; at ``worker_process_shutdown`` it disposes of the engine on that same loop.

Delivery: content and workflow tasks are acknowledged late and rejected (so redelivered) when their
child process dies, with prefetch 1 so a long task never sits behind another in a child's buffer.
"""

from __future__ import annotations

import os
import ssl
import time
from typing import Any

import structlog
from celery import Celery, Task, signals
from kombu import Exchange, Queue

from app.config.settings import Settings, get_settings

log = structlog.get_logger("app.celery")

QUEUE_SERVICES: dict[str, str] = {
    "logs": "celery_logs",
    "content_generation": "celery_content",
    "roadmap_workflow": "celery_workflow",
}
TASK_MODULES: dict[str, str] = {
    "logs": "app.tasks.logs_tasks",
    "content_generation": "app.tasks.content_generation_tasks",
    "roadmap_workflow": "app.tasks.roadmap_workflow_tasks",
}
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
            delay = min(30, 2 ** (self.request.retries or 0))
            log.warning(
                "task_database_unavailable_retrying", task=self.name, retry_in=delay, error=str(error)
            )
            raise self.retry(exc=error, countdown=delay) from None


def queue_options(queue: str, settings: Settings | None = None) -> dict[str, Any]:
    """Per-queue task options, derived from settings in this one place."""
    settings = settings or get_settings()
    hard = {
        "logs": settings.CELERY_LOGS_TIME_LIMIT,
        "content_generation": settings.CELERY_CONTENT_TIME_LIMIT,
        "roadmap_workflow": settings.CELERY_WORKFLOW_TIME_LIMIT,
    }[queue]
    long_running = queue != "logs"
    return {
        "base": DatabaseTask,
        "time_limit": hard,
        "soft_time_limit": max(1, int(hard * 0.9)),
        # Late ack + reject on a dead child: a killed worker's task is redelivered, not lost.
        # The logs queue keeps early ack: its flush is at-least-once through Redis anyway.
        "acks_late": long_running,
        "reject_on_worker_lost": long_running,
    }


def create_celery(settings: Settings | None = None, *, set_as_current: bool = True) -> Celery:
    settings = settings or get_settings()
    url = settings.redis_url
    app = Celery(
        "roadmap",
        broker=url,
        backend=url,
        include=list(TASK_MODULES.values()),
        set_as_current=set_as_current,
    )
    exchange = Exchange("roadmap", type="direct")
    prefix = {"global_keyprefix": settings.REDIS_KEY_PREFIX} if settings.REDIS_KEY_PREFIX else {}
    app.conf.update(
        task_queues=[Queue(name, exchange, routing_key=name) for name in QUEUE_SERVICES],
        task_default_exchange="roadmap",
        task_default_queue="logs",
        task_default_routing_key="logs",
        task_create_missing_queues=False,
        task_routes={
            f"{module}.*": {"queue": queue, "routing_key": queue} for queue, module in TASK_MODULES.items()
        },
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
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
        broker_transport_options={"visibility_timeout": settings.celery_visibility_timeout, **prefix},
        result_backend_transport_options=prefix,
        broker_use_ssl=_ssl_options(settings),
        redis_backend_use_ssl=_ssl_options(settings),
    )
    return app


celery_app = create_celery()
app = celery_app  # `celery -A app.core.celery_app` finds either name


# --- worker lifecycle ------------------------------------------------------------------------------

_worker_service: str | None = None


def service_for_queues(queues: str | list[str] | None) -> str:
    """The service a worker is, from its ``--queues``; SERVICE_TYPE when it serves several or none."""
    names = queues.split(",") if isinstance(queues, str) else list(queues or [])
    names = [n.strip() for n in names if n.strip()]
    if len(names) == 1 and names[0] in QUEUE_SERVICES:
        return QUEUE_SERVICES[names[0]]
    return get_settings().SERVICE_TYPE


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting to this signal stops Celery from installing its own handlers; structlog does it.
    from app.core.logging import configure_logging

    configure_logging(get_settings(), service=_worker_service)


@signals.celeryd_init.connect
def _on_worker_parent_init(options: dict[str, Any] | None = None, **_: Any) -> None:
    """In the parent, before the pool forks: learn the service name. No database access here."""
    global _worker_service
    _worker_service = service_for_queues((options or {}).get("queues"))
    from app.core.logging import configure_logging

    configure_logging(get_settings(), service=_worker_service, force=True)
    log.info("celery_worker_starting", worker_service=_worker_service)
    from app.budget.guard import enforce_budget

    enforce_budget(get_settings(), _worker_service)  # skipped when railway_entrypoint.sh already checked
    port = get_settings().WORKER_METRICS_PORT
    if port:
        from app.core.metrics import serve_worker_metrics

        serve_worker_metrics(port)  # a thread of the parent only: it does not survive fork
        log.info("worker_metrics_serving", port=port)


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
