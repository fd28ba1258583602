"""/metrics under ``uvicorn --workers 2``: prometheus-client multiprocess mode, aggregated and swept."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import sizing
from app.config.settings import get_settings
from app.core.metrics import sweep_dead_processes
from devkit.api import running_api
from devkit.ports import free_port
from tests.support.auth import auth
from tests.support.metrics_text import sample

pytestmark = pytest.mark.slow


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "prom"
    folder.mkdir()
    return folder


@pytest.fixture
def api_server(subprocess_env: dict[str, str], multiproc_dir: Path) -> Iterator[str]:
    env = {**subprocess_env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    with running_api(env, free_port(), workers=2) as base:
        yield base


def test_metrics_count_every_request_across_workers(api_server: str) -> None:
    n = 40
    admin = auth("admin")
    with httpx.Client(base_url=api_server, timeout=10) as http:
        before = http.get("/metrics").text
        for _ in range(n):
            assert http.get("/api/v1/task-logs", params={"limit": 5}, headers=admin).status_code == 200
        text = http.get("/metrics").text
    route = {"route": "/api/v1/task-logs", "method": "GET", "status": "200"}
    assert sample(text, "http_requests_total", **route) - sample(before, "http_requests_total", **route) == n
    holds = sample(text, "db_connection_hold_seconds_count", service="api")
    assert holds >= n  # one checkout per request at least
    # Gauges are per live worker, summed: never more in use than the workers could hold.
    assert 0 <= sample(text, "db_pool_connections_in_use", service="api") <= 2 * 3
    per_worker = sizing.pool_sizing(
        get_settings(), "api"
    ).pool_size  # the API's pool is fixed-size: 2 + 1 -> 3 + 0
    assert sample(text, "db_pool_size", service="api") in (per_worker, 2 * per_worker)  # 1 or 2 workers
    assert "# TYPE db_connection_hold_seconds histogram" in text
    assert 'db_pool_connection_timeouts_total{service="api"} 0.0' in text


def test_dead_process_gauges_are_swept(multiproc_dir: Path, standalone_env: dict[str, str]) -> None:
    env = {**standalone_env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    code = (
        "from app.core import metrics; import time; "
        "metrics.DB_POOL_OPEN.labels('api').set(7); print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    try:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        def open_connections() -> float:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(multiproc_dir))
            return sample(generate_latest(registry).decode(), "db_pool_connections_open", service="api")

        assert sweep_dead_processes(multiproc_dir) == []  # alive: kept
        assert open_connections() == 7
        proc.kill()  # kill -9: no chance to clean up after itself
        proc.wait()
        assert sweep_dead_processes(multiproc_dir) == [proc.pid]
        assert open_connections() == 0
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        proc.kill()
