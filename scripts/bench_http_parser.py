#!/usr/bin/env python3
"""What bounding the header section costs in throughput: uvicorn's HTTP protocols under wrk.

    python scripts/bench_http_parser.py [--rounds 3 --seconds 8 --connections 64 --workers 1]

The same app, a route that does nothing (``GET /health`` of devkit/bare_app.py: no database, a
constant JSON body), so that the HTTP layer is most of what is measured, served by uvicorn with:

* ``httptools``: uvicorn's default, unbounded (the baseline);
* ``h11``: ``--http h11 --h11-max-incomplete-event-size 32768``, which bounds the size (a larger
  section is 400) but has no header deadline;
* ``bounded``: ``--http app.api.http_protocol:BoundedHttpToolsProtocol``, the API's (size, count,
  deadline and connection cap, settings at their defaults).

Two loads: kept-alive connections (an edge proxy's, the common case) and a new connection per request
(``Connection: close``, where the per-connection work shows: the header timer armed at accept). Each
request carries a bearer token and a few ordinary headers (what the API's callers send, and what the
protocol counts). The protocols alternate within each round; figures are medians over the rounds, and
each protocol is printed as a ratio to httptools. wrk (Debian package ``wrk``) prints its own CPU share.

``--in-process`` measures the protocols alone instead, without sockets or wrk: each protocol object is
fed the same request 20,000 times through an in-memory transport and a no-op ASGI app, and the time per
request is printed (best of 3 x 3). It is what the machine's noise hides under wrk: the protocol's own
cost, the one thing that differs between the servers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

from devkit.bare_app import bare_server
from devkit.bench import ADMIN_URL
from devkit.wrk import Run, ensure_wrk, wrk

PROTOCOLS = {
    "httptools": ["--http", "httptools"],
    "h11": ["--http", "h11", "--h11-max-incomplete-event-size", "32768"],
    "bounded": ["--http", "app.api.http_protocol:BoundedHttpToolsProtocol"],
}
# What a browser or SDK behind an edge sends (the token is a stand-in of a real one's length).
HEADERS = [
    "Authorization: Bearer " + "eyJhbGciOiJIUzI1NiJ9." + "x" * 180,
    "Accept: application/json",
    "Accept-Encoding: gzip, deflate, br",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
    "X-Forwarded-For: 203.0.113.7",
    "X-Forwarded-Proto: https",
    "X-Request-Id: 4f1c2d9e-8a7b-4c3d-9e2f-1a2b3c4d5e6f",
]
LOADS = {"keep-alive": [], "close": ["Connection: close"]}


def in_process(rounds: int) -> None:
    import asyncio

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    async def app(scope: dict, receive: object, send: Callable[[dict], Awaitable[None]]) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"status":"healthy"}'})

    class Transport(asyncio.Transport):
        """Takes what the protocol writes and drops it: only the protocol's work is timed."""

        def __init__(self) -> None:
            super().__init__()
            self.closing = False

        def write(self, data: bytes | bytearray | memoryview) -> None:
            pass

        def close(self) -> None:
            self.closing = True

        def is_closing(self) -> bool:
            return self.closing

        def get_extra_info(self, name: str, default: object = None) -> object:
            return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    request = (
        "GET /health HTTP/1.1\r\nHost: bench\r\n" + "".join(h + "\r\n" for h in HEADERS) + "\r\n"
    ).encode()

    async def per_request(protocol_class: type, n: int = 20_000) -> float:
        config = Config(app=app, lifespan="off", log_level="warning", http=protocol_class)
        config.load()
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
        protocol.connection_made(Transport())
        started = time.perf_counter()
        for _ in range(n):
            protocol.data_received(request)
            while not protocol.cycle.response_complete:
                await asyncio.sleep(0)
        return (time.perf_counter() - started) / n * 1e6

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from app.api.http_protocol import BoundedHttpToolsProtocol

    classes = {"httptools": HttpToolsProtocol, "bounded": BoundedHttpToolsProtocol}
    best: dict[str, float] = {}
    for round_no in range(1, rounds + 1):
        for name, cls in classes.items():
            us = min([asyncio.run(per_request(cls)) for _ in range(3)])
            best[name] = min(best.get(name, us), us)
            print(f"round {round_no} {name:<10}{us:6.2f} us a request (the protocol alone)", flush=True)
    extra = best["bounded"] - best["httptools"]
    ratio = best["httptools"] / best["bounded"]
    print(f"\nbest: httptools {best['httptools']:.2f} us, bounded {best['bounded']:.2f} us: "
          f"+{extra:.2f} us a request (x{ratio:.3f} of the protocol's throughput)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (1: one core's parser cost)")
    parser.add_argument("--in-process", action="store_true", help="the protocols alone, no sockets or wrk")
    args = parser.parse_args()
    if args.in_process:
        in_process(args.rounds)
        return
    binary = ensure_wrk()
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s, GET /health of the bare app, "
          f"{args.workers} uvicorn worker(s), {len(HEADERS)} request headers", flush=True)  # fmt: skip
    runs: dict[tuple[str, str], list[Run]] = {}
    names = list(PROTOCOLS)
    for round_no in range(1, args.rounds + 1):
        order = names if round_no % 2 else names[::-1]  # alternate, so drift hits every protocol alike
        for protocol in order:
            # The bare app opens a 1-connection asyncpg pool at start; /health never uses it.
            with bare_server(ADMIN_URL, args.workers, *PROTOCOLS[protocol]) as base:
                for load, extra in LOADS.items():
                    headers = HEADERS + extra
                    wrk(binary, base + "/health", 2, args.connections, args.threads, headers)  # warm-up
                    run = wrk(binary, base + "/health", args.seconds, args.connections, args.threads, headers)
                    runs.setdefault((protocol, load), []).append(run)
                    print(
                        f"round {round_no} {protocol:<10}{load:<11}{run.rps:9.1f} req/s"
                        f"  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms"
                        f"  non-2xx {run.non_2xx}  errors {run.errors}"
                        f"  wrk CPU {100 * run.generator_cpu:4.1f}%",
                        flush=True,
                    )

    def median(protocol: str, load: str) -> float:
        return statistics.median(r.rps for r in runs[(protocol, load)])

    print(f"\nmedians of {args.rounds} rounds, as a ratio to httptools:")
    print(f"{'protocol':<12}" + "".join(f"{load:>26}" for load in LOADS))
    for protocol in names:
        cells = []
        for load in LOADS:
            rps = median(protocol, load)
            cells.append(f"{rps:9.0f} req/s  x{rps / median('httptools', load):5.2f}")
        print(f"{protocol:<12}" + "".join(f"{cell:>26}" for cell in cells))
    cpu = max(r.generator_cpu for rs in runs.values() for r in rs)
    bad = sum(r.non_2xx + r.errors for rs in runs.values() for r in rs)
    print(f"\nwrk's own CPU share (highest of all runs): {100 * cpu:.1f}% of the machine; "
          f"non-2xx responses and socket errors: {bad}")  # fmt: skip


if __name__ == "__main__":
    main()
