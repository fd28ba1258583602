#!/usr/bin/env python3
"""Where the guide's "production throughput x2.5" comes from, and where it does not hold.

    python scripts/bench_hold_time.py [--seconds 5 --concurrency 64 --holds 0,0.005,0.02]

One process, the project's own engine (``app.db.engine.build_engine``: instrumented QueuePool, idle
ping), 64 requests in flight, each borrowing a connection and running one statement, under the
guide's old pools (2 + 2, 30 s timeout) and its new ones (6 + 4, 5 s) alternately. The statement
really waits on the server: ``SELECT pg_sleep(h)`` holds the connection for ``h`` seconds, as a
remote managed database's round trips or a slow query do. ``h = 0`` is ``SELECT 1`` on loopback.

When requests are bound by connection hold time, a process completes at most
``pool capacity / hold time`` of them per second, so throughput scales with capacity:
(6 + 4) / (2 + 2) = 2.5. When holds are short against the process's own CPU work, four connections
are never all busy and a bigger pool buys nothing: the ratio falls toward 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time

import structlog

from devkit.bench import bench_database

POOLS = {"old (2 + 2)": ("2", "2", "30"), "new (6 + 4)": ("6", "4", "5")}


async def drive(url: str, pool: tuple[str, str, str], hold: float, seconds: float, concurrency: int) -> float:
    from sqlalchemy import text

    from app.config.settings import Settings
    from app.db.engine import build_engine, engine_options

    size, overflow, timeout = pool
    settings = Settings.from_mapping({
        "DATABASE_URL": url, "DB_POOL_SIZE": size, "DB_MAX_OVERFLOW": overflow, "DB_POOL_TIMEOUT": timeout,
        # The old pools had no request deadline; one above their 30 s keeps the settings valid.
        "REQUEST_TIMEOUT_SECONDS": float(timeout) + 30, "LOG_LEVEL": "WARNING",
    })  # fmt: skip
    engine = build_engine(engine_options(settings, "bench"))  # not a topology service: the shared sizes apply
    statement = text("SELECT pg_sleep(:h)").bindparams(h=hold) if hold else text("SELECT 1")
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with engine.connect() as conn:
                await conn.execute(statement)
            done += 1

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--holds", default="0,0.002,0.005,0.02")
    args = parser.parse_args()
    holds = [float(h) for h in args.holds.split(",")]
    # Saturating a pool is the point here: its usage events would only fill the screen.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    with bench_database() as url:
        print(f"{args.concurrency} requests in flight, {args.seconds:g} s per run, {args.rounds} rounds "
              "(pools alternate); one statement per checkout")  # fmt: skip
        print()
        print("| server-side hold per request | old pools (2 + 2) req/s | new pools (6 + 4) req/s | ratio | "
              "capacity / hold, new |")  # fmt: skip
        print("|---:|---:|---:|---:|---:|")
        for hold in holds:
            runs: dict[str, list[float]] = {name: [] for name in POOLS}
            for _ in range(args.rounds):
                for name, pool in POOLS.items():
                    runs[name].append(asyncio.run(drive(url, pool, hold, args.seconds, args.concurrency)))
            old, new = (statistics.median(runs[name]) for name in POOLS)
            bound = f"{10 / hold:.0f}" if hold else "-"
            label = f"{1000 * hold:g} ms (`pg_sleep`)" if hold else "0 (`SELECT 1`, loopback)"
            print(f"| {label} | {old:.0f} | {new:.0f} | {new / old:.2f} | {bound} |", flush=True)


if __name__ == "__main__":
    main()
