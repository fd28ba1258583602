#!/usr/bin/env python3
"""Wall time of a roadmap's content phase against the ideal, at several concept concurrency limits.

Runs the real ``generate_content`` (semaphore + gather, real PostgreSQL sessions, the real search router
with one Tavily key in the database and the offline search provider) with the offline LLM's simulated
latency. Ideal = ceil(concepts / limit) x latency.

    python scripts/bench_roadmap_content.py [--concepts 30 --latency 1.0 --limits 15,5,1]
"""

from __future__ import annotations

import argparse
import math
import os
import uuid

import structlog

from devkit.bench import bench_database, use_in_this_process


async def one_run(concepts: int, latency: float) -> object:
    from app.db.session import safe_session
    from app.repositories.roadmaps import RoadmapRepository
    from app.tasks.content_generation_tasks import generate_content
    from app.tools.llm import OfflineLLM
    from app.tools.search.offline import OfflineSearch
    from app.tools.search.web_search_router import WebSearchRouter

    async with safe_session() as session:
        repo = RoadmapRepository(session)
        roadmap = await repo.create("Benchmark topic", "bench", concepts)
        await repo.add_concepts(roadmap.id, await OfflineLLM().plan_concepts("Benchmark topic", concepts))
    return await generate_content(
        str(roadmap.id), llm=OfflineLLM(latency=latency), router=WebSearchRouter(OfflineSearch())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--concepts", type=int, default=30)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--limits", default="15,5,1")
    args = parser.parse_args()
    with bench_database() as url:
        use_in_this_process(url)
        from app import runtime, sizing
        from app.config.settings import get_settings

        async def add_key() -> None:
            from app.db.session import safe_session
            from app.repositories.tavily_keys import TavilyKeyRepository

            async with safe_session() as session:
                await TavilyKeyRepository(session).add(f"bench-{uuid.uuid4().hex}", 100_000)

        runtime.current().run(add_key())
        # The pool of a content worker's child (6 + 4 in production), every usage event logged.
        os.environ.update(SERVICE_TYPE="celery_content", DB_POOL_USAGE_LOG_INTERVAL="0")
        get_settings.cache_clear()
        pool = sizing.pool_sizing(get_settings())
        print(f"{args.concepts} concepts, offline LLM latency {args.latency:g} s, pool "
              f"{pool.pool_size} + {pool.max_overflow}, fan-out checkouts "
              f"{sizing.fan_out_checkouts(get_settings())}")  # fmt: skip
        print(f"{'limit':>6}{'wall s':>9}{'ideal s':>9}{'ratio':>7}{'peak in flight':>16}{'written':>9}"
              f"{'pool >=70%':>12}{'pool >=90%':>12}")  # fmt: skip
        for limit in [int(x) for x in args.limits.split(",")]:
            os.environ["CONCEPT_CONCURRENCY_LIMIT"] = str(limit)
            get_settings.cache_clear()
            with structlog.testing.capture_logs() as logs:
                report = runtime.current().run(one_run(args.concepts, args.latency))
            high = sum(1 for e in logs if e["event"] == "db_pool_high_usage")
            critical = sum(1 for e in logs if e["event"] == "db_pool_critical_usage")
            ideal = math.ceil(args.concepts / limit) * args.latency
            print(f"{limit:>6}{report.seconds:>9.2f}{ideal:>9.2f}{report.seconds / ideal:>7.2f}"
                  f"{report.max_in_flight:>16}{report.written:>9}{high:>12}{critical:>12}")  # fmt: skip
        runtime.current().shutdown()


if __name__ == "__main__":
    main()
