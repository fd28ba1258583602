"""The API's side of an edge that refuses for it (API_ADMISSION=edge): HAProxy's agent-check.

Why an edge refuses at all: past saturation, a refusal written by an API worker waits for that worker's
turn on a core. With 8 workers on 2 cores that wait is several times the CPU the worker spends ahead of
the refusal (measured: a worker's event loop stalled 61 ms on average while running 10 ms), so refusals
took 50-190 ms however cheap the refusal itself (scripts/bench_overload.py). HAProxy in front, one
process that uses a sliver of a core, refuses in well under a millisecond.

What stays here is the decision: every worker computes its adaptive limit as before
(``app.api.admission``) and publishes it in the ``api_admission_limit`` gauge. The supervisor (which
does no request work, so it answers promptly) answers HAProxy's agent-check with ``maxconn:N``, N the
live workers' limits summed; HAProxy then admits N requests at once to the database routes and answers
the rest ``503 overloaded`` itself (deploy/haproxy/api-edge.cfg). Before any worker has published, N
is the ceiling: every worker's pool less one connection, as a new worker's own limit starts.

The probe that measures the unqueued latency is the edge's too: for a moment after every probe
boundary the agent answers one request per worker (``admission.edge_pinned``), so the whole host runs
unloaded at once, and the workers time the requests begun then. Workers pinning themselves could not
do it: each gets whatever the edge sends, and a worker sure to be alone measured the others' load.
"""

from __future__ import annotations

import socketserver
import threading
import time
from pathlib import Path

import structlog
from prometheus_client.multiprocess import MultiProcessCollector

from app import sizing
from app.api import admission
from app.config.settings import Settings
from app.core import metrics

log = structlog.get_logger("app.edge")


def published_limit(directory: Path) -> int | None:
    """The live API workers' admission limits, summed (None: none has published yet)."""
    metrics.sweep_dead_processes(directory)  # as /metrics does: a killed worker's limit is not live
    files = [str(path) for path in directory.glob("gauge_livesum_*.db")]
    for metric in MultiProcessCollector.merge(files, accumulate=True):
        if metric.name == metrics.API_ADMISSION_LIMIT.describe()[0].name:
            total = sum(sample.value for sample in metric.samples)
            return int(total) if total > 0 else None
    return None


class _Agent(socketserver.BaseRequestHandler):
    """HAProxy's agent protocol: it connects, reads one line, and closes."""

    server: AgentServer

    def handle(self) -> None:
        self.request.sendall(f"maxconn:{self.server.limit()}\n".encode())


class AgentServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], directory: Path | None, processes: int, pool: int) -> None:
        super().__init__(address, _Agent)
        self.directory, self.processes = directory, processes
        # Before any worker has measured: each admits its ceiling, as a new worker's limit starts.
        self.fallback = processes * admission.ceiling(pool)

    def limit(self) -> int:
        if admission.edge_pinned(time.time()):
            return self.processes  # the probe: one request per process, in every process at once
        if self.directory is None:
            return self.fallback
        try:
            return published_limit(self.directory) or self.fallback
        except (OSError, ValueError):  # a file being written or removed: the next check reads it
            return self.fallback


def start_agent(settings: Settings, host: str = "0.0.0.0") -> AgentServer:
    """Serve the agent-check on API_EDGE_AGENT_PORT from a thread of this (the supervisor's) process.
    uvicorn starts its workers with spawn, so the thread never reaches them."""
    directory = metrics.multiprocess_dir()
    if directory is None:
        log.warning("edge_agent_without_metrics_dir", reason="PROMETHEUS_MULTIPROC_DIR is not set")
    server = AgentServer(
        (host, settings.API_EDGE_AGENT_PORT),
        directory,
        sizing.plan(settings, "api").processes,
        sizing.pool_sizing(settings, "api").max_connections,
    )
    threading.Thread(target=server.serve_forever, name="edge-agent", daemon=True).start()
    log.info("edge_agent_started", port=settings.API_EDGE_AGENT_PORT, ceiling=server.fallback)
    return server
