#!/usr/bin/env python3
"""Database queries the Tavily availability cache saves (the guide expects 95% fewer).

Runs the real WebSearchRouter (offline search provider) N times at a given concurrency, with the Redis
cache and without it, in two situations: keys with credits, and every key exhausted. Counts what the
router sent to PostgreSQL: availability checks (get_best_key) and credit reservations.

    python scripts/bench_search_cache.py [--searches 2000 --concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from devkit.bench import bench_database, use_in_this_process


async def scenario(searches: int, concurrency: int, credits: int, use_cache: bool) -> tuple:
    from sqlalchemy import text

    from app.db.session import safe_session
    from app.tools.search.offline import OfflineSearch
    from app.tools.search.web_search_router import WebSearchRouter, availability_lookups

    async with safe_session() as session:
        await session.execute(text("DELETE FROM tavily_api_keys"))
        await session.execute(
            text("INSERT INTO tavily_api_keys (api_key, remaining_credits, status) VALUES (:k, :c, :s)"),
            {"k": f"bench-{uuid.uuid4().hex}", "c": credits, "s": "active" if credits else "exhausted"},
        )
    router = WebSearchRouter(OfflineSearch(), use_cache=use_cache)
    await router.invalidate()
    gate = asyncio.Semaphore(concurrency)
    reasons: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            reasons.append((await router.search(f"query {i}")).reason)

    before = availability_lookups()
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(searches)))
    elapsed = time.perf_counter() - started
    after = availability_lookups()
    # Every search the availability check let through went on to reserve a credit; in these two
    # situations (plenty of credits, or none) none of them ended as no_search_keys.
    reservations = sum(reason != "no_search_keys" for reason in reasons)
    return after["database"] - before["database"], reservations, after["cache"] - before["cache"], elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--searches", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    with bench_database() as url:
        use_in_this_process(url)
        from app import runtime

        print(f"{args.searches} searches, {args.concurrency} concurrent, TTL 30 s")
        print(f"{'situation':<20}{'cache':<7}{'availability q':>15}{'reservation q':>14}"
              f"{'db q/search':>12}{'cache hits':>11}{'searches/s':>11}")  # fmt: skip
        for label, credits in (("keys with credits", 10**9), ("all keys exhausted", 0)):
            totals = {}
            for use_cache in (False, True):
                avail, reserve, hits, elapsed = runtime.current().run(
                    scenario(args.searches, args.concurrency, credits, use_cache)
                )
                totals[use_cache] = (avail, avail + reserve)
                per_search = (avail + reserve) / args.searches
                print(f"{label:<20}{'on' if use_cache else 'off':<7}{avail:>15}{reserve:>14}"
                      f"{per_search:>12.3f}{hits:>11}{args.searches / elapsed:>11.0f}")  # fmt: skip
            (a_off, t_off), (a_on, t_on) = totals[False], totals[True]
            print(f"  -> availability queries {100 * (1 - a_on / a_off):.1f}% fewer; "
                  f"all database queries {100 * (1 - t_on / t_off):.1f}% fewer")  # fmt: skip
        runtime.current().shutdown()


if __name__ == "__main__":
    main()
