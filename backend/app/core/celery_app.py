"""The Celery application (``celery -A app.core.celery_app worker --queues=<queue>``): configuration only.

Queues, routes (by task module) and per-queue task options come from ``app.topology``: one worker
service per queue.

The configuration is read from the settings when the app is first used (``add_defaults`` with a
callable is Celery's lazy configuration), not when this module is imported. Everything a worker does
besides being configured lives in ``app.worker``, which the worker imports at start (``imports``):
``lifecycle`` (service, child count, budget guard, per-process resources), ``retry`` (the task base
class) and ``events`` (task events). Nothing here imports a task module or a worker module: task
modules and everything that enqueues import this one, so it must stay at the bottom.

Delivery: content and workflow tasks are acknowledged late and rejected (so redelivered) when their
child process dies, with prefetch 1 so a long task never sits behind another in a child's buffer. The
messages of a worker that died are handed out again after the visibility timeout derived from the
time limits (``app.sizing.celery_visibility_timeout``).
"""

from __future__ import annotations

import ssl
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from app import sizing, topology
from app.config import connections
from app.config.settings import Settings, get_settings

_SSL_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
TASK_MODULES = [*(s.task_module for s in topology.WORKERS if s.task_module), "app.tasks.probe"]
WORKER_MODULES = ["app.worker.lifecycle", "app.worker.events"]


def _ssl_options(settings: Settings) -> dict[str, Any] | None:
    """``rediss://...?ssl_cert_reqs=required`` (the managed-Redis URL form) -> redis-py SSL options."""
    wanted = connections.redis_ssl_cert_reqs(settings)
    return None if wanted is None else {"ssl_cert_reqs": _SSL_REQS[wanted]}


def queue_options(queue: str, settings: Settings) -> dict[str, Any]:
    """The options of every task routed to ``queue``, from its service in the topology and its settings."""
    spec = topology.for_queue(queue)
    if spec is None:
        raise KeyError(f"unknown queue {queue!r}; queues: {', '.join(topology.QUEUES)}")
    hard = sizing.plan(settings, spec.name).time_limit or 60
    return {
        "time_limit": hard,
        "soft_time_limit": max(1, int(hard * 0.9)),
        # Late ack + reject on a dead child: a killed worker's task is redelivered, not lost.
        "acks_late": spec.acks_late,
        "reject_on_worker_lost": spec.acks_late,
    }


class QueueTaskOptions:
    """A Celery task annotation: each task gets its queue's options (time limits, acknowledgement)
    when the app binds it, so a task decorator names only the task. Celery applies annotations after
    the decorator, so they win: change a queue's options in the topology, not on one task."""

    def __init__(self, settings: Settings) -> None:
        self.by_module = {
            s.task_module: queue_options(s.queue, settings)
            for s in topology.WORKERS
            if s.task_module and s.queue
        }

    def annotate(self, task: Any) -> dict[str, Any] | None:
        return self.by_module.get(task.name.rpartition(".")[0])


def celery_config(settings: Settings) -> dict[str, Any]:
    url = connections.redis_url(settings)
    exchange = Exchange("roadmap", type="direct")
    prefix = {"global_keyprefix": settings.REDIS_KEY_PREFIX} if settings.REDIS_KEY_PREFIX else {}
    return {
        "broker_url": url,
        "result_backend": url,
        "imports": WORKER_MODULES,
        "task_queues": [Queue(name, exchange, routing_key=name) for name in topology.QUEUES],
        "task_default_exchange": "roadmap",
        "task_default_queue": "logs",
        "task_default_routing_key": "logs",
        "task_create_missing_queues": False,
        "task_routes": {
            f"{s.task_module}.*": {"queue": s.queue, "routing_key": s.queue}
            for s in topology.WORKERS
            if s.task_module
        },
        "task_annotations": [QueueTaskOptions(settings)],
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 24 * 3600,
        # Nothing reads a task's result (progress lives in the database); storing them cost a Redis
        # write per task and tied publishing to the result backend. The probe task opts back in.
        "task_ignore_result": True,
        "task_track_started": True,
        "worker_prefetch_multiplier": 1,
        # At SIGTERM (remapped to Celery's cold shutdown by the start command, app.start_commands) running
        # tasks get this long to finish; the rest are cancelled and their late-acknowledged messages
        # go back to the queue (app.sizing.shutdown_seconds).
        "worker_soft_shutdown_timeout": settings.CELERY_SOFT_SHUTDOWN_TIMEOUT,
        # Recycle a child after many tasks: bounds slow leaks without touching the pool budget.
        "worker_max_tasks_per_child": 1000,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "broker_connection_retry_on_startup": True,
        # Publishing gives up within about a second when Redis is down: the outbox keeps the message
        # and the request does not wait on the broker.
        "broker_connection_timeout": 2,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "redis_socket_connect_timeout": 2,
        "redis_socket_timeout": 5,
        "broker_transport_options": {
            # Late-acknowledged messages of a worker that died are handed to another one after this.
            "visibility_timeout": sizing.celery_visibility_timeout(settings),
            # Look for such messages every 10 s (kombu's unacked_restore_interval), not every 10th
            # look (100 s): redelivery is then bounded by the timeout plus 10 s. One indexed range
            # query per worker parent, under kombu's mutex.
            "unacked_restore_throttle": 1,
            **prefix,
        },
        "result_backend_transport_options": prefix,
        "broker_use_ssl": _ssl_options(settings),
        "redis_backend_use_ssl": _ssl_options(settings),
    }


def create_celery(settings: Settings | None = None, *, set_as_current: bool = True) -> Celery:
    """The app, configured from ``settings`` (default: the process's settings, read on first use)."""
    app = Celery(
        "roadmap",
        include=TASK_MODULES,
        task_cls="app.worker.retry:DatabaseTask",
        set_as_current=set_as_current,
    )
    app.add_defaults(lambda: celery_config(settings or get_settings()))
    return app


celery_app = create_celery()
app = celery_app  # `celery -A app.core.celery_app` finds either name
