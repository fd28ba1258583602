#!/usr/bin/env python3
"""The request path against the hardware's pace: the project vs a bare Starlette + asyncpg app, under wrk.

    python scripts/bench_request_path.py [--rounds 2 --seconds 8 --connections 64 --workers 8]

Both servers run the same number of uvicorn workers (production's UVICORN_WORKERS by default) on the
same migrated database: 1,000 task events and a roadmap of 30 concepts. The load generator is wrk
(Debian package ``wrk``, a C program: installed here with apt-get when we are root), not a Python
client, and its own CPU share is printed so a reader can see it was not the bottleneck. Servers
alternate within each round (bare, minimal FastAPI, project, project with NullPool; reversed every other
round), so the machine's drift hits all alike; the figures are medians over the rounds. Printed:

* project / bare on ``GET /api/v1/task-logs?limit=5`` and ``GET /api/v1/roadmaps/{id}`` (30 concepts);
* project / minimal FastAPI (``devkit/fastapi_app.py``: FastAPI, asyncpg and pydantic, the same two
  queries, response model shape and auth dependency shape) on task logs, also within each round (the
  two ran back to back), and minimal FastAPI / bare;
* pooled / NullPool through HTTP (the project with ``DB_POOL_CLASS=null``);
* each server's CPU time per request (its processes' CPU time over the requests wrk counted), and the
  minimal app's over the project's on task logs: the cost behind the req/s ratio, which moves less
  with the machine than req/s do.

The project runs as production starts it (the start command's server and bounded HTTP protocol) with
production settings (the API's pool, idle validation, pool metrics and the hold-time histogram on),
LOG_LEVEL=WARNING and no access log, as devkit.bench.api_server starts it; requests
carry a bearer token (the owner's; an admin's for task logs, which only admins read) so each route
answers as it would in production.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

from devkit.bare_app import bare_server
from devkit.bench import JWT_SECRET, OWNER, api_server, bench_database, bench_token, seed_reads
from devkit.wrk import Run, ensure_wrk, wrk


def report(round_no: int, name: str, path_name: str, run: Run) -> None:
    print(
        f"round {round_no} {name:<9}{path_name:<10}{run.rps:9.1f} req/s  p50 {run.p50_ms:7.1f} ms  "
        f"p99 {run.p99_ms:7.1f} ms  non-2xx {run.non_2xx}  errors {run.errors}  "
        f"wrk CPU {100 * run.generator_cpu:4.1f}%  server CPU {run.server_cpu_us or 0:5.0f} us/request",
        flush=True,
    )


def main() -> None:
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
    tokens = {
        "task-logs": bench_token(OWNER, "admin", secret=JWT_SECRET),
        "roadmap": bench_token(OWNER, "user", secret=JWT_SECRET),
    }
    results: dict[tuple[str, str], list[Run]] = {}
    with bench_database() as url:
        roadmap_id = asyncio.run(seed_reads(url))
        paths = {"task-logs": "/api/v1/task-logs?limit=5", "roadmap": f"/api/v1/roadmaps/{roadmap_id}"}
        servers = {
            "bare": lambda: bare_server(url, args.workers),
            "FastAPI": lambda: bare_server(url, args.workers, app="devkit.fastapi_app:app"),
            "project": lambda: api_server(url, workers=args.workers, JWT_SECRET_KEY=JWT_SECRET),
            "NullPool": lambda: api_server(
                url, workers=args.workers, JWT_SECRET_KEY=JWT_SECRET, DB_POOL_CLASS="null"
            ),
        }
        print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s, {args.workers} uvicorn "
              f"workers each, {args.rounds} rounds, {os.cpu_count()} cores", flush=True)  # fmt: skip
        for round_no in range(1, args.rounds + 1):
            # Reversed every other round, so a drift of the machine within a round favours no server.
            order = list(servers.items())
            for name, start in order if round_no % 2 else reversed(order):
                with start() as base:
                    for path_name, path in paths.items():
                        if name in ("NullPool", "FastAPI") and path_name != "task-logs":
                            continue
                        auth = [f"Authorization: Bearer {tokens[path_name]}"]
                        load = (args.connections, args.threads, auth)
                        wrk(binary, base + path, 2, *load)  # warm-up
                        run = wrk(binary, base + path, args.seconds, *load, server_cpu=True)
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
    per_round = [
        p.rps / m.rps
        for p, m in zip(results[("project", "task-logs")], results[("FastAPI", "task-logs")], strict=True)
    ]
    print(f"| (project / minimal FastAPI within each round: {', '.join(f'{r:.2f}' for r in per_round)}; "
          f"median {statistics.median(per_round):.2f}) | | | |")  # fmt: skip
    # The same comparison in the servers' CPU time per request: what each costs, whatever share of the
    # 2 cores it got (PostgreSQL and wrk take the rest); the minimal app's over the project's, so that
    # it reads like the req/s ratio above.
    cpu_us = {name: statistics.median(r.server_cpu_us or 0 for r in results[(name, "task-logs")])
              for name in ("project", "FastAPI")}  # fmt: skip
    print(f"| server CPU per request, minimal FastAPI / project (us: {cpu_us['FastAPI']:.0f} / "
          f"{cpu_us['project']:.0f}) | | | {cpu_us['FastAPI'] / cpu_us['project']:.2f} |")  # fmt: skip
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
