"""Every Prometheus metric of the service, and the exposition that works under ``uvicorn --workers N``.

With several worker processes each one has its own pool and its own counters. prometheus-client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set *before* this module is imported, which the launch
scripts do) keeps them in per-process files that ``/metrics`` aggregates: counters and histograms are
summed, and the pool gauges use ``livesum`` so a service's figure is the sum over its live processes.
Without the variable, the process's default registry is used (tests, one-off scripts).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# From a millisecond query up past the guide's 10 s alert (histogram_quantile(0.95, ...) > 10).
HOLD_TIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

DB_POOL_SIZE = Gauge(
    "db_pool_size",
    "Configured SQLAlchemy pool_size (persistent connections), summed over live processes.",
    ["service"],
    multiprocess_mode="livesum",
)
DB_POOL_MAX_CONNECTIONS = Gauge(
    "db_pool_max_connections",
    "pool_size + max_overflow: the most connections the service's processes may hold.",
    ["service"],
    multiprocess_mode="livesum",
)
DB_POOL_IN_USE = Gauge(
    "db_pool_connections_in_use",
    "Connections checked out of the pool right now.",
    ["service"],
    multiprocess_mode="livesum",
)
DB_POOL_OPEN = Gauge(
    "db_pool_connections_open",
    "Server connections the pool holds open (in use + idle); what pg_stat_activity counts.",
    ["service"],
    multiprocess_mode="livesum",
)
DB_POOL_TIMEOUTS = Counter(
    "db_pool_connection_timeouts_total",
    "Checkouts that waited DB_POOL_TIMEOUT and gave up (pool exhausted).",
    ["service"],
)
# The server refused a new connection (SQLSTATE 53300): the cap on this environment's database or
# role is full, or the whole server. Counted where the connection is attempted (every engine, the
# checkpointer pool), so each refusal counts once whoever then sees the error.
DB_ALLOCATION_EXHAUSTED = Counter(
    "db_allocation_exhausted",
    "New connections the server refused with 53300 (CONNECTION LIMIT or max_connections reached).",
    ["environment", "service"],
)
DB_HOLD_SECONDS = Histogram(
    "db_connection_hold_seconds",
    "Time a connection stayed checked out, from checkout to checkin.",
    ["service"],
    buckets=HOLD_TIME_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by route template and status code.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency, by route template.",
    ["method", "route"],
)
# Admission control (app.api.admission): the concurrency each API process admits, and what it shed.
API_ADMISSION_LIMIT = Gauge(
    "api_admission_limit",
    "Requests the service's API processes admit at once on the database routes, summed over processes.",
    ["service"],
    multiprocess_mode="livesum",
)
API_ADMISSION_REJECTED = Counter(
    "api_admission_rejected_total",
    "Requests answered 503 overloaded at once because their process was at its concurrency limit.",
    ["service"],
)

# The transactional outbox (app.messaging.outbox): a broker outage shows as failures and a growing backlog,
# never as lost tasks. source: request (after the API's commit), worker, relay.
OUTBOX_PUBLISHED = Counter(
    "outbox_messages_published_total", "Outbox messages the broker took, by publisher.", ["source"]
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "outbox_publish_failures_total",
    "Publish attempts that failed or ran past OUTBOX_PUBLISH_TIMEOUT (left for the relay).",
    ["source"],
)
WATCHDOG_ACTIONS = Counter(
    "roadmap_watchdog_actions_total",
    "Roadmaps the watchdog found stalled: re-dispatched (by task) or failed.",
    ["action"],
)

# Data lifecycle (app.messaging.retention): what retention and DELETE removed, and what the tables hold.
RETENTION_ROWS_DELETED = Counter(
    "retention_rows_deleted_total",
    "Rows deleted, by table and why: retention (age) or deleted (a roadmap deleted through the API).",
    ["table", "reason"],
)
# Refreshed at each scrape of the API's /metrics, like the audit; every replica reports the same figure.
DATA_TABLE_BYTES = Gauge(
    "data_table_bytes",
    "pg_total_relation_size of the tables that grow with use (checkpoints, task_logs, outbox).",
    ["environment", "table"],
    multiprocess_mode="livemostrecent",
)
DATA_OLDEST_ROW_AGE = Gauge(
    "data_oldest_row_age_seconds",
    "Age of the oldest row of task_logs and of the outbox (0: the table is empty).",
    ["environment", "table"],
    multiprocess_mode="livemostrecent",
)

LANGGRAPH_POOL_SIZE = Gauge(
    "langgraph_pool_size",
    "Connections the LangGraph checkpointer pool holds open.",
    ["service"],
    multiprocess_mode="livesum",
)
LANGGRAPH_POOL_IN_USE = Gauge(
    "langgraph_pool_connections_in_use",
    "Checkpointer connections lent out right now.",
    ["service"],
    multiprocess_mode="livesum",
)
LANGGRAPH_POOL_MAX = Gauge(
    "langgraph_pool_max_size",
    "LANGGRAPH_POOL_MAX_SIZE, summed over the live processes that opened a checkpointer pool.",
    ["service"],
    multiprocess_mode="livesum",
)


# From the live audit (pg_stat_activity), refreshed at each scrape of the API's /metrics. Every API
# replica reports the same server-side figures: aggregate them with max, not sum, across instances.
DB_SERVER_CONNECTIONS = Gauge(
    "db_server_connections",
    "Connections to this environment's database, per service (other: psql, migrations, tools).",
    ["environment", "service"],
    multiprocess_mode="livemostrecent",
)
DB_CONNECTION_SERVICE_BUDGET = Gauge(
    "db_connection_service_budget",
    "The most connections a service may open (replicas x processes x pool, plus checkpointer pools).",
    ["environment", "service"],
    multiprocess_mode="livemostrecent",
)
DB_CONNECTION_ALLOCATION = Gauge(
    "db_connection_allocation",
    "DB_CONNECTION_BUDGET: the environment's share of the server's max_connections.",
    ["environment"],
    multiprocess_mode="livemostrecent",
)
DB_INSTANCE_CONNECTIONS = Gauge(
    "db_instance_connections",
    "Connections on the whole server named <environment>.*, for every known environment.",
    ["environment"],
    multiprocess_mode="livemostrecent",
)
DB_INSTANCE_ALLOCATION = Gauge(
    "db_instance_allocation",
    "Each known environment's allocation, as this environment knows it (its profile or its settings).",
    ["environment"],
    multiprocess_mode="livemostrecent",
)
DB_SERVER_MAX_CONNECTIONS = Gauge(
    "db_server_max_connections",
    "The server's max_connections (SHOW max_connections).",
    multiprocess_mode="livemostrecent",
)
DB_SERVER_RESERVED_CONNECTIONS = Gauge(
    "db_server_reserved_connections",
    "Slots ordinary roles cannot use: superuser_reserved_connections (+ reserved_connections).",
    multiprocess_mode="livemostrecent",
)

TASK_EVENTS_DROPPED = Counter(
    "task_events_dropped_total",
    "Task events lost because Redis did not take them (emit() never fails the task that logs).",
    ["reason"],
)

TAVILY_AVAILABILITY_LOOKUPS = Counter(
    "tavily_availability_lookups_total",
    "Tavily key availability checks, by where the answer came from (cache or database).",
    ["source"],
)

_LIVE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def multiprocess_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_processes(directory: Path) -> list[int]:
    """Drop the live-gauge files of processes that died without cleaning up (kill -9, OOM).

    ``mark_process_dead`` at shutdown covers orderly exits; this covers the rest, so a killed uvicorn
    worker's pool does not stay in ``db_pool_connections_in_use`` forever.
    """
    dead: set[int] = set()
    for path in directory.glob("gauge_live*_*.db"):
        match = _LIVE_FILE.match(path.name)
        if match and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))
    return sorted(dead)


def mark_this_process_dead() -> None:
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(os.getpid(), str(directory))


class _SweepingCollector(multiprocess.MultiProcessCollector):
    """Aggregates the per-process files, after dropping those of dead processes."""

    def collect(self):  # type: ignore[no-untyped-def]
        sweep_dead_processes(Path(self._path))
        return super().collect()


def exposition_registry() -> CollectorRegistry:
    """The registry to expose: all live processes' files in multiprocess mode, else this process's."""
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    _SweepingCollector(registry, path=str(directory))
    return registry


def render_latest() -> tuple[bytes, str]:
    """The exposition text for ``/metrics``, aggregated over processes when in multiprocess mode."""
    return generate_latest(exposition_registry()), CONTENT_TYPE_LATEST


def serve_worker_metrics(port: int) -> None:
    """A Celery worker has no web server: its parent serves its children's metrics on ``port``."""
    from prometheus_client import start_http_server

    start_http_server(port, registry=exposition_registry())
