#!/usr/bin/env python3
"""Past saturation: the pool's queue alone vs a static concurrency limit vs adaptive admission control.

    python scripts/bench_overload.py [--seconds 10 --workers 8 --load 1,4,10]

One migrated database (1,000 task events), the API with production settings and 8 uvicorn workers,
``GET /api/v1/task-logs?limit=5`` with an admin's token (two queries per request). 1x is the
concurrency that saturates the workers' pools (workers x the API's pool, 8 x 10): one more request and
one waits in a pool's queue. ``--sweep`` also prints throughput against concurrency, where the CPU
saturates (on 2 cores long before the pools do). Each server runs at 1x, 4x and 10x:

* ``off``: no admission control, requests queue at the pool (today's behaviour before issue 18);
* ``static``: a fixed limit per process, the pool's size (``API_ADMISSION=static``);
* ``adaptive``: the gradient limit (``API_ADMISSION=adaptive``, the default);
* ``edge``: the same limit, applied by HAProxy in front (``API_ADMISSION=edge``,
  deploy/haproxy/api-edge.cfg): the clients connect to HAProxy, which refuses for the API.

The clients are closed-loop keep-alive connections in several processes (raw asyncio HTTP/1.1, so
each request's status and latency are recorded; wrk reports neither by status), with a 10 s client
timeout. ``--honour-retry-after`` makes a client that got 503 wait its Retry-After (0.5-1.5x, jittered),
as the API asks;
by default they retry at once, the harder case. Printed per server and load: goodput (2xx per second),
p50/p99 of the 2xx, the share answered 503 at once (overloaded), the slowest rejection, other failures,
and the clients' CPU share (with ``edge``, HAProxy's too).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

from devkit.bench import api_server, bench_database, bench_headers, seed_reads
from devkit.edge import running_edge
from devkit.ports import free_port
from devkit.wrk import cpu_seconds

PATH = "/api/v1/task-logs?limit=5"


@dataclass
class Result:
    seconds: float
    ok: list[float] = field(default_factory=list)  # latencies of the 2xx, seconds
    shed: list[float] = field(default_factory=list)  # latencies of the 503 overloaded
    other: int = 0  # any other status, a timeout or a broken connection
    cpu: float = 0.0  # the clients' CPU seconds
    edge_cpu: float | None = None  # HAProxy's CPU seconds, with the edge

    def merge(self, other: Result) -> None:
        self.ok += other.ok
        self.shed += other.shed
        self.other += other.other


async def _client(
    host: str, port: int, request: bytes, measured_from: float, until: float, honour: bool, result: Result
) -> None:
    """One kept-alive connection, from the warm-up on; only requests begun after ``measured_from`` count,
    so the figures never include the wave of connects that starts a run."""
    reader = writer = None
    while time.monotonic() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            started = time.perf_counter()
            writer.write(request)
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
                status = int(head[9:12])
                lower = head.lower()
                length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)  # type: ignore[union-attr]
            elapsed = time.perf_counter() - started
            if time.monotonic() - elapsed < measured_from:
                pass
            elif 200 <= status < 300:
                result.ok.append(elapsed)
            elif status == 503 and b'"overloaded"' in body:
                result.shed.append(elapsed)
            else:
                result.other += 1
            if status == 503 and b'"overloaded"' in body and honour:
                # With jitter, as a well-behaved client does: exact waits return as one wave.
                retry_after = int(lower.split(b"retry-after:")[1].split(b"\r\n")[0])
                wait = retry_after * random.uniform(0.5, 1.5)
                await asyncio.sleep(max(0.0, min(wait, until - time.monotonic())))
            if b"connection: close" in lower:
                writer.close()
                writer = None
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            if time.monotonic() >= measured_from:
                result.other += 1
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


def _load_process(args: tuple[str, int, bytes, int, float, float, bool], out: multiprocessing.Queue) -> None:
    host, port, request, connections, warmup, seconds, honour = args

    async def run() -> Result:
        measured_from = time.monotonic() + warmup
        until = measured_from + seconds
        result = Result(seconds)
        clients = (
            _client(host, port, request, measured_from, until, honour, result) for _ in range(connections)
        )
        before = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*clients)
        after = resource.getrusage(resource.RUSAGE_SELF)
        # The warm-up's share too: an upper bound on what the clients took while measured.
        result.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result.cpu *= seconds / (seconds + warmup)
        return result

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out.put(asyncio.run(run()))


def load(base: str, headers: dict[str, str], connections: int, seconds: float, warmup: float,
         processes: int, honour: bool) -> Result:  # fmt: skip
    host, port = base.removeprefix("http://").split(":")
    lines = [f"GET {PATH} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    queue: multiprocessing.Queue = multiprocessing.Queue()
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    procs = [
        multiprocessing.Process(
            target=_load_process, args=((host, int(port), request, n, warmup, seconds, honour), queue)
        )
        for n in shares
        if n
    ]
    for proc in procs:
        proc.start()
    total = Result(seconds)
    for _ in procs:
        part = queue.get()
        total.merge(part)
        total.cpu += part.cpu
    for proc in procs:
        proc.join()
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    from app import sizing
    from app.config.settings import Settings

    production = Settings.from_mapping({"ENVIRONMENT": "production"})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=production.UVICORN_WORKERS)
    parser.add_argument("--load", default="1,4,10", help="multiples of the saturating concurrency")
    parser.add_argument("--saturation", type=int, help="1x (default: workers x the API's pool)")
    parser.add_argument("--sweep", action="store_true", help="print throughput against concurrency first")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--modes", default="off,static,adaptive,edge")
    parser.add_argument("--honour-retry-after", action="store_true")
    args = parser.parse_args()
    multiples = [int(m) for m in args.load.split(",")]
    headers = bench_headers("admin")
    cores = os.cpu_count() or 1
    rows: list[tuple[str, int, int, Result]] = []
    with bench_database() as url:
        asyncio.run(seed_reads(url))
        pool = sizing.pool_sizing(production, "api").max_connections
        saturation = args.saturation or args.workers * pool
        if args.sweep:
            with api_server(url, workers=args.workers, API_ADMISSION="off") as base:
                best, sweep = 0.0, []
                for concurrency in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64):
                    run = load(base, headers, concurrency, 4, 1, args.processes, False)
                    rate = len(run.ok) / run.seconds
                    sweep.append((concurrency, rate))
                    p99 = 1000 * pct(run.ok, 0.99)
                    print(f"sweep c={concurrency:<3} {rate:8.0f} 2xx/s  p99 {p99:6.1f} ms", flush=True)
                    best = max(best, rate)
                knee = next(c for c, rate in sweep if rate >= 0.95 * best)
                print(f"throughput within 5% of its best from {knee} connections", flush=True)
        clients = "honour" if args.honour_retry_after else "ignore"
        print(f"\n1x = {saturation} connections ({args.workers} uvicorn workers x pool {pool}, {cores} "
              f"cores); clients {clients} Retry-After\n", flush=True)  # fmt: skip
        for mode in args.modes.split(","):
            with serving(url, args.workers, mode) as (base, edge_pid):
                edge = [psutil.Process(edge_pid)] if edge_pid is not None else []
                load(base, headers, saturation, 3, 0, args.processes, False)  # warm every worker
                for multiple in multiples:
                    connections = saturation * multiple
                    before = cpu_seconds(edge)
                    run = load(base, headers, connections, args.seconds, args.warmup, args.processes,
                               args.honour_retry_after)  # fmt: skip
                    if edge_pid is not None:  # as the clients': the warm-up's share taken out
                        share = args.seconds / (args.seconds + args.warmup)
                        run.edge_cpu = (cpu_seconds(edge) - before) * share
                    rows.append((mode, multiple, connections, run))
                    report(mode, multiple, connections, run, cores)
    print()
    print("| admission | load | connections | goodput 2xx/s | p50 2xx ms | p99 2xx ms | shed |"
          " shed p50 / p99 / max ms | failed | clients' CPU |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, multiple, connections, run in rows:
        print(f"| {mode} | {multiple}x | {connections} | " + cells(run, cores))
    print()
    for mode in args.modes.split(","):
        base_row = next((r for m, x, _, r in rows if m == mode and x == min(multiples)), None)
        top_row = next((r for m, x, _, r in rows if m == mode and x == max(multiples)), None)
        if base_row is None or top_row is None or not base_row.ok or not top_row.ok:
            continue
        peak = max(len(r.ok) / r.seconds for m, _, _, r in rows if m == mode)
        print(f"{mode:>8}: at {max(multiples)}x, p99 / p99 at {min(multiples)}x = "
              f"{pct(top_row.ok, 0.99) / pct(base_row.ok, 0.99):.2f} (target <= 3), goodput / peak = "
              f"{len(top_row.ok) / top_row.seconds / peak:.2f} (target >= 0.90), slowest rejection "
              f"{1000 * max(top_row.shed, default=0):.1f} ms (target < 50)")  # fmt: skip


@contextmanager
def serving(url: str, workers: int, mode: str) -> Iterator[tuple[str, int | None]]:
    """The API (and, for ``edge``, HAProxy in front): the base URL the clients use, HAProxy's pid."""
    if mode != "edge":
        with api_server(url, workers=workers, API_ADMISSION=mode) as base:
            yield base, None
        return
    agent = free_port()
    api = api_server(url, workers=workers, API_ADMISSION="edge", API_EDGE_AGENT_PORT=str(agent))
    with api as base, running_edge(int(base.rsplit(":", 1)[1]), agent) as edge:
        yield edge.url, edge.pid


def cells(run: Result, cores: int) -> str:
    total = len(run.ok) + len(run.shed) + run.other
    return (
        f"{len(run.ok) / run.seconds:.0f} | {1000 * pct(run.ok, 0.5):.1f} | {1000 * pct(run.ok, 0.99):.1f} | "
        f"{100 * len(run.shed) / max(total, 1):.1f}% | {1000 * pct(run.shed, 0.5):.1f} / "
        f"{1000 * pct(run.shed, 0.99):.1f} / "
        f"{1000 * max(run.shed, default=float('nan')):.1f} | {run.other} | "
        f"{100 * run.cpu / (run.seconds * cores):.0f}%"
        + ("" if run.edge_cpu is None else f" (HAProxy {100 * run.edge_cpu / (run.seconds * cores):.0f}%)")
        + " |"
    )


def report(mode: str, multiple: int, connections: int, run: Result, cores: int) -> None:
    print(f"{mode:>8} {multiple:>2}x c={connections:<4} " + cells(run, cores), flush=True)


if __name__ == "__main__":
    main()
