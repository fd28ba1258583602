#!/usr/bin/env python3
"""Server connections each Celery worker holds: idle after start, at the peak of a burst, idle after.

Starts the three workers exactly as production does (backend/scripts/railway_entrypoint.sh, production
defaults: concurrency 8 / 10 / 6, pool 6 + 4) on a throw-away database, sends a burst of probe tasks
that each hold a connection for --hold seconds, samples pg_stat_activity every 50 ms by
application_name, and prints per service: idle, peak, after, and the budget
concurrency x (pool_size + max_overflow). Loopback only; stops every process it started.

    python scripts/measure_worker_connections.py [--tasks-per-child 4 --hold 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from app import sizing, topology
from app.config.settings import Settings
from devkit.api import BACKEND
from devkit.bench import REDIS_URL, bench_database


async def count(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT application_name, count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'production.celery_%'"
            " GROUP BY 1"
        )
        return {r["application_name"].removeprefix("production."): r["n"] for r in rows}
    finally:
        await conn.close()


async def burst(url: str, results: list, peaks: dict[str, int]) -> None:
    conn = await asyncpg.connect(url)
    try:
        while not all(r.ready() for r in results):
            rows = await conn.fetch(
                "SELECT application_name, count(*) AS n FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name LIKE 'production.celery_%'"
                " GROUP BY 1"
            )
            for r in rows:
                service = r["application_name"].removeprefix("production.")
                peaks[service] = max(peaks.get(service, 0), r["n"])
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--tasks-per-child", type=int, default=4)
    parser.add_argument("--hold", type=float, default=0.5)
    args = parser.parse_args()
    prefix = f"measure-{uuid.uuid4().hex[:8]}:"
    with bench_database() as url, tempfile.TemporaryDirectory() as logs:
        env = {**{k: v for k, v in os.environ.items() if k not in Settings.model_fields},
               "ENVIRONMENT": "production", "DATABASE_URL": url, "REDIS_URL": REDIS_URL,
               "REDIS_KEY_PREFIX": prefix, "LOG_LEVEL": "INFO"}  # fmt: skip
        settings = Settings.from_mapping(env)
        plans = {s.name: sizing.plan(settings, s.name) for s in topology.WORKERS}
        os.environ.update(env)
        procs = {}
        for service in plans:
            log = Path(logs) / f"{service}.log"
            procs[service] = (subprocess.Popen(
                ["bash", str(BACKEND / "scripts" / "railway_entrypoint.sh")],
                env={**env, "SERVICE_TYPE": service, "CELERY_LOGLEVEL": "INFO"},
                stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
            ), log)  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while not all(" ready." in log.read_text() for _, log in procs.values()):
                if time.monotonic() > deadline:
                    raise SystemExit("workers did not start")
                time.sleep(0.3)
            time.sleep(2)
            from app.core.celery_app import celery_app

            idle = asyncio.run(count(url))
            from app.tasks.probe import probe  # one task every worker registers; sent to each queue

            tasks = {name: probe.s().set(queue=p.service.queue) for name, p in plans.items()}
            results = [
                tasks[service].delay(hold_seconds=args.hold)
                for service, plan in plans.items()
                for _ in range(plan.processes * args.tasks_per_child)
            ]
            peaks: dict[str, int] = {}
            started = time.perf_counter()
            asyncio.run(burst(url, results, peaks))
            elapsed = time.perf_counter() - started
            failed = sum(1 for r in results if r.failed())
            after = asyncio.run(count(url))
            print(f"{len(results)} probe tasks holding a connection {args.hold:g} s each, "
                  f"done in {elapsed:.1f} s, {failed} failed")  # fmt: skip
            print(f"{'service':<16}{'concurrency':>12}{'idle':>6}{'peak':>6}{'after':>7}{'budget':>8}")
            for service, plan in plans.items():
                print(f"{service:<16}{plan.processes:>12}{idle.get(service, 0):>6}{peaks.get(service, 0):>6}"
                      f"{after.get(service, 0):>7}{plan.sqlalchemy:>8}")  # fmt: skip
            celery_app.close()
        finally:
            for proc, _ in procs.values():
                os.killpg(proc.pid, signal.SIGTERM)
            for proc, _ in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
