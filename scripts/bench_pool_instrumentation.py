#!/usr/bin/env python3
"""Requests/s with and without pool instrumentation, in the same run, through real uvicorn workers.

The two configurations alternate (on, off, on, off, ...) so drift in the machine's load hits both
alike; the load generator is an httpx client on loopback with a fixed number of in-flight requests.

    python scripts/bench_pool_instrumentation.py [--rounds 3 --seconds 5 --concurrency 16 --workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

from devkit.bench import api_server, bench_database, bench_headers

PATH = "/api/v1/task-logs?limit=5"


async def drive(base: str, seconds: float, concurrency: int) -> tuple[float, float, int]:
    """Returns (requests/s, p95 latency in ms, non-200 responses)."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits, headers=bench_headers()) as http:
        for _ in range(50):  # warm-up: build the engine, fill the pool
            await http.get(PATH)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await http.get(PATH)
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return len(latencies) / elapsed, 1000 * latencies[int(0.95 * (len(latencies) - 1))], errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"on": [], "off": []}
    print(f"GET {PATH}: {args.rounds} rounds x {args.seconds:g} s, {args.concurrency} in flight, "
          f"{args.workers} uvicorn worker(s), pool 6+4")  # fmt: skip
    with bench_database() as url:
        for round_no in range(1, args.rounds + 1):
            for mode in ("on", "off"):
                env = {"DB_POOL_METRICS_ENABLED": "true" if mode == "on" else "false"}
                with api_server(url, workers=args.workers, **env) as base:
                    rps, p95, errors = asyncio.run(drive(base, args.seconds, args.concurrency))
                results[mode].append(rps)
                print(f"round {round_no} instrumentation {mode:<3} {rps:8.1f} req/s  p95 {p95:6.1f} ms  "
                      f"non-200 {errors}")  # fmt: skip
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    print(f"median: with instrumentation {on:.1f} req/s, without {off:.1f} req/s, "
          f"ratio {on / off:.3f} ({100 * (on / off - 1):+.1f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
