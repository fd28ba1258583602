#!/usr/bin/env python3
"""Time from an exhausted pool to the client's 503, through a real uvicorn worker.

How the pool is exhausted, for real: the script takes an ACCESS EXCLUSIVE lock on task_logs, so the
first ``pool_size + max_overflow`` requests each check out a connection and block on the lock, holding
it. The requests after them find the pool empty and must get a 503 after DB_POOL_TIMEOUT. Then the lock
is released and the blocked requests finish with 200.

    python scripts/bench_exhaustion.py [--pool-size 6 --max-overflow 4 --timeout 5 --extra 10]

It also runs the guide's old behaviour for comparison (SQLAlchemy's default 30 s pool timeout) unless
--no-compare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg
import httpx

from devkit.bench import api_server, bench_database, bench_headers


async def measure(base: str, database_url: str, holders: int, extra: int) -> tuple[list[float], list[int]]:
    lock = await asyncpg.connect(database_url)
    # pg_stat_activity is a snapshot per transaction, so it is watched from another connection.
    watch = await asyncpg.connect(database_url)
    try:
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE task_logs IN ACCESS EXCLUSIVE MODE")
        async with httpx.AsyncClient(base_url=base, timeout=120, headers=bench_headers()) as http:
            blocked = [asyncio.create_task(http.get("/api/v1/task-logs")) for _ in range(holders)]
            # Wait until every holder is really waiting on the lock with a pooled connection.
            while (
                await watch.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                < holders
            ):
                await asyncio.sleep(0.05)

            async def probe() -> tuple[float, int]:
                started = time.perf_counter()
                response = await http.get("/api/v1/task-logs")
                return time.perf_counter() - started, response.status_code

            results = await asyncio.gather(*(probe() for _ in range(extra)))
            await tx.rollback()
            statuses = [r.status_code for r in await asyncio.gather(*blocked)]
        return [r[0] for r in results], [r[1] for r in results] + statuses
    finally:
        await lock.close()
        await watch.close()


def report(label: str, times: list[float], statuses: list[int], extra: int) -> None:
    rejected = statuses[:extra]
    print(
        f"{label:<34} probes={extra:<3} 503s={rejected.count(503):<3} "
        f"min={min(times):.3f}s median={statistics.median(times):.3f}s max={max(times):.3f}s  "
        f"holders ok={statuses[extra:].count(200)}/{len(statuses) - extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--pool-size", type=int, default=6)
    parser.add_argument("--max-overflow", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--extra", type=int, default=10, help="requests beyond the pool's capacity")
    parser.add_argument("--no-compare", action="store_true")
    args = parser.parse_args()
    holders = args.pool_size + args.max_overflow
    runs = [(f"DB_POOL_TIMEOUT={args.timeout:g}s (this project)", args.timeout)]
    if not args.no_compare:
        runs.append(("SQLAlchemy default pool_timeout=30s", 30.0))
    print(f"pool {args.pool_size}+{args.max_overflow}, 1 uvicorn worker, {args.extra} requests past capacity")
    with bench_database() as url:
        for label, timeout in runs:
            env = {
                "DB_POOL_SIZE": str(args.pool_size),
                "DB_MAX_OVERFLOW": str(args.max_overflow),
                "DB_POOL_TIMEOUT": str(timeout),
                # The lock holders wait the whole run, up to the 30 s of the comparison (a stack without
                # deadlines): neither the request nor the statement deadline may cut them off first.
                "REQUEST_TIMEOUT_SECONDS": str(2 * timeout + 10),
                "DB_STATEMENT_TIMEOUT": str(2 * timeout + 10),
            }
            with api_server(url, **env) as base:
                times, statuses = asyncio.run(measure(base, url, holders, args.extra))
            report(label, times, statuses, args.extra)


if __name__ == "__main__":
    main()
