#!/usr/bin/env python3
"""The request path against the hardware's pace: the project vs a bare Starlette + asyncpg app, under wrk.

    python scripts/bench_request_path.py [--rounds 2 --seconds 8 --connections 64 --workers 8]

Both servers run the same number of uvicorn workers (production's UVICORN_WORKERS by default) on the
same migrated database: 1,000 task events and a roadmap of 30 concepts. The load generator is wrk
(Debian package ``wrk``, a C program: installed here with apt-get when we are root), not a Python
client, and its own CPU share is printed so a reader can see it was not the bottleneck. Servers
alternate within each round (bare, minimal FastAPI, project, project with NullPool), so the machine's
drift hits all alike; the figures are medians over the rounds. Printed:

* project / bare on ``GET /api/v1/task-logs?limit=5`` and ``GET /api/v1/roadmaps/{id}`` (30 concepts);
* project / minimal FastAPI (``bench_fastapi_app.py``: FastAPI, asyncpg and pydantic, the same two
  queries, response model shape and auth dependency shape) on task logs, and minimal FastAPI / bare;
* pooled / NullPool through HTTP (the project with ``DB_POOL_CLASS=null``).

The project runs with production settings (pool 6 + 4, pre-ping, pool metrics and the hold-time
histogram on), LOG_LEVEL=WARNING and no access log, as bench_server.api_server starts it; requests
carry a bearer token (the owner's; an admin's for task logs, which only admins read) so each route
answers as it would in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from bench_server import BACKEND, api_server, bench_database
from own_services import free_port, wait_answering

SCRIPTS = Path(__file__).resolve().parent
JWT_SECRET = "bench-request-path-" + "x" * 32
OWNER = "bench-owner"


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("[bench] installing wrk (Debian package)", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian/Ubuntu) or brew install wrk")
    return found


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int
    generator_cpu: float  # wrk's CPU time / (wall time x cores)


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(binary: str, url: str, seconds: float, connections: int, threads: int, headers: list[str]) -> Run:
    """One wrk run, with the CPU share wrk itself took (the generator must not be the bottleneck)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    header_args = [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run(
        [binary, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", *header_args, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)) else 0
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return Run(rps, p50, p99, non_2xx, errors, cpu / (wall * (os.cpu_count() or 1)))


async def seed(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO task_logs (task_id, task_name, queue, event, level, payload)"
            " VALUES ($1, $2, 'logs', 'task_succeeded', 'info', $3::jsonb)",
            [(str(uuid.uuid4()), "app.tasks.bench", json.dumps({"n": i, "runtime_seconds": 0.1}))
             for i in range(1000)],
        )  # fmt: skip
        roadmap_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO roadmaps (id, topic, status, requested_concepts, owner)"
            " VALUES ($1, 'Connection pooling', 'completed', 30, $2)",
            roadmap_id, OWNER,
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO concepts (id, roadmap_id, position, title, status, attempts, content)"
            " VALUES ($1, $2, $3, $4, 'completed', 1, $5)",
            [(uuid.uuid4(), roadmap_id, i, f"Concept #{i}", f"Content of concept {i}. " * 40)
             for i in range(30)],
        )  # fmt: skip
        return str(roadmap_id)
    finally:
        await conn.close()


@contextmanager
def bare_server(database_url: str, workers: int, module: str = "bench_bare_app") -> Iterator[str]:
    """``module``'s app: bench_bare_app (Starlette) or bench_fastapi_app (FastAPI, task logs only)."""
    port = free_port()
    env = {**os.environ, "BARE_DATABASE_URL": database_url, "JWT_SECRET_KEY": JWT_SECRET}
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", f"{module}:app", "--app-dir", str(SCRIPTS),
             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--no-access-log",
             "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_answering(base, proc, Path(log.name))
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def report(round_no: int, name: str, path_name: str, run: Run) -> None:
    print(
        f"round {round_no} {name:<9}{path_name:<10}{run.rps:9.1f} req/s  p50 {run.p50_ms:7.1f} ms  "
        f"p99 {run.p99_ms:7.1f} ms  non-2xx {run.non_2xx}  errors {run.errors}  "
        f"wrk CPU {100 * run.generator_cpu:4.1f}%",
        flush=True,
    )


def main() -> None:
    sys.path.insert(0, str(BACKEND))
    from app.config.settings import Settings

    production = Settings.from_mapping({"ENVIRONMENT": "production"})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=production.UVICORN_WORKERS)
    args = parser.parse_args()
    binary = ensure_wrk()
    os.environ["JWT_SECRET_KEY"] = JWT_SECRET
    from app.core.security import create_token

    signing = Settings.from_mapping({"JWT_SECRET_KEY": JWT_SECRET})
    tokens = {
        "task-logs": create_token(OWNER, "admin", settings=signing),
        "roadmap": create_token(OWNER, "user", settings=signing),
    }
    results: dict[tuple[str, str], list[Run]] = {}
    with bench_database() as url:
        roadmap_id = asyncio.run(seed(url))
        paths = {"task-logs": "/api/v1/task-logs?limit=5", "roadmap": f"/api/v1/roadmaps/{roadmap_id}"}
        servers = {
            "bare": lambda: bare_server(url, args.workers),
            "FastAPI": lambda: bare_server(url, args.workers, "bench_fastapi_app"),
            "project": lambda: api_server(url, workers=args.workers, JWT_SECRET_KEY=JWT_SECRET),
            "NullPool": lambda: api_server(
                url, workers=args.workers, JWT_SECRET_KEY=JWT_SECRET, DB_POOL_CLASS="null"
            ),
        }
        print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s, {args.workers} uvicorn "
              f"workers each, {args.rounds} rounds, {os.cpu_count()} cores", flush=True)  # fmt: skip
        for round_no in range(1, args.rounds + 1):
            for name, start in servers.items():
                with start() as base:
                    for path_name, path in paths.items():
                        if name in ("NullPool", "FastAPI") and path_name != "task-logs":
                            continue
                        auth = [f"Authorization: Bearer {tokens[path_name]}"]
                        wrk(binary, base + path, 2, args.connections, args.threads, auth)  # warm-up
                        run = wrk(binary, base + path, args.seconds, args.connections, args.threads, auth)
                        results.setdefault((name, path_name), []).append(run)
                        report(round_no, name, path_name, run)

    def median(name: str, path_name: str) -> float:
        return statistics.median(r.rps for r in results[(name, path_name)])

    cpu = max(r.generator_cpu for runs in results.values() for r in runs)
    print()
    print("| comparison | this side req/s | other side req/s | ratio |")
    print("|---|---:|---:|---:|")
    labels = {"task-logs": paths["task-logs"], "roadmap": "/api/v1/roadmaps/{id} (30 concepts)"}
    for path_name in paths:
        project, bare = median("project", path_name), median("bare", path_name)
        print(f"| project / bare, `GET {labels[path_name]}` | {project:.0f} | {bare:.0f} | "
              f"{project / bare:.2f} |")  # fmt: skip
    project, minimal = median("project", "task-logs"), median("FastAPI", "task-logs")
    print(f"| project / minimal FastAPI, `GET {labels['task-logs']}` | {project:.0f} | {minimal:.0f} | "
          f"{project / minimal:.2f} |")  # fmt: skip
    minimal_bare = minimal / median("bare", "task-logs")
    print(f"| minimal FastAPI / bare, `GET {labels['task-logs']}` | {minimal:.0f} | "
          f"{median('bare', 'task-logs'):.0f} | {minimal_bare:.2f} |")  # fmt: skip
    pooled, null = median("project", "task-logs"), median("NullPool", "task-logs")
    label = f"pooled / NullPool, `GET {paths['task-logs']}`"
    print(f"| {label} | {pooled:.0f} | {null:.0f} | {pooled / null:.2f} |")
    print(f"\nwrk's own CPU share (highest of all runs): {100 * cpu:.1f}% of the machine")
    bad = sum(r.non_2xx + r.errors for runs in results.values() for r in runs)
    print(f"non-2xx responses and socket errors in all runs: {bad}")


if __name__ == "__main__":
    main()
