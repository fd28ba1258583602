#!/usr/bin/env python3
"""What a roadmap leaves behind, what one retention pass removes, and what the pass costs concurrent reads.

Creates N roadmaps on a throw-away database and drives each one's workflow in this process, as the
workers would (offline LLM and search, small concept counts, the real LangGraph graph and saver), with a
checkpoint window so that every thread stays. Their task events are flushed from Redis to task_logs as the
logs queue would, and the first half's are aged past TASK_LOG_RETENTION_DAYS. Then one retention pass at
0 s: the checkpoint sweep (through the saver) and the task_logs batches. Meanwhile a real uvicorn API
serves GET /api/v1/roadmaps/{id} to concurrent readers; their p99 during the pass is compared with the p99
of the same readers without it, before and after the pass, in the same run.

    python scripts/bench_retention.py [--roadmaps 1000 --concepts 2 --readers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time

from devkit.bench import api_server, bench_database, bench_headers, use_in_this_process

TABLES = (
    "checkpoints",
    "checkpoint_blobs",
    "checkpoint_writes",
    "task_logs",
    "concepts",
    "roadmaps",
    "outbox",
)
OWNER = "bench"


async def create_roadmaps(n: int, concepts: int, parallel: int) -> list[str]:
    from app.db.session import safe_session
    from app.messaging import task_events
    from app.repositories.roadmaps import RoadmapRepository
    from app.repositories.task_logs import TaskLogRepository
    from app.tasks.content_generation_tasks import generate_content
    from app.workflows import roadmap_graph

    gate = asyncio.Semaphore(parallel)
    ids: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            async with safe_session() as session:
                row, _ = await RoadmapRepository(session).create_once(f"Topic {i}", OWNER, concepts, None)
                roadmap_id = str(row["id"])
                requested = task_events.record(
                    "roadmap_requested", task_name="api.create_roadmap", task_id=roadmap_id
                )
                await TaskLogRepository(session).add_many([requested])
            assert await roadmap_graph.run(roadmap_id, f"Topic {i}", concepts) == "awaiting_content"
            await generate_content(roadmap_id)
            assert await roadmap_graph.resume_after_content(roadmap_id) == "completed"
            ids.append(roadmap_id)

    await asyncio.gather(*(one(i) for i in range(n)))
    # The logs queue's part: the buffered events (workflow nodes, content reports) into task_logs.
    while batch := task_events.peek_batch(5000):
        async with safe_session() as session:
            await TaskLogRepository(session).add_many(batch)
        task_events.drop_batch(len(batch))
    return ids


async def figures(ids: list[str]) -> dict[str, tuple[int, int]]:
    """Per table: rows that belong to these roadmaps (thread_id, roadmap_id or task_id) and bytes."""
    from sqlalchemy import text

    from app.db.session import autocommit

    owner_of = {
        "checkpoints": "thread_id = ANY(:names)",
        "checkpoint_blobs": "thread_id = ANY(:names)",
        "checkpoint_writes": "thread_id = ANY(:names)",
        "task_logs": "task_id = ANY(:names)",
        "concepts": "roadmap_id = ANY(CAST(:names AS uuid[]))",
        "roadmaps": "id = ANY(CAST(:names AS uuid[]))",
        "outbox": "args->>0 = ANY(:names)",
    }
    out = {}
    async with autocommit() as conn:
        for table in TABLES:
            rows = await conn.scalar(
                text(f"SELECT count(*) FROM {table} WHERE {owner_of[table]}"), {"names": ids}
            )
            size = await conn.scalar(text("SELECT pg_total_relation_size(to_regclass(:t))"), {"t": table})
            out[table] = (int(rows or 0), int(size or 0))
    return out


async def age_task_logs(ids: list[str], days: int) -> int:
    from sqlalchemy import text

    from app.db.session import autocommit

    async with autocommit() as conn:
        result = await conn.execute(
            text(
                "UPDATE task_logs SET created_at = created_at - make_interval(days => :d)"
                " WHERE task_id = ANY(:n)"
            ),
            {"d": days, "n": ids},
        )
    return int(result.rowcount or 0)


async def old_task_logs(days: int) -> int:
    from sqlalchemy import text

    from app.db.session import autocommit

    async with autocommit() as conn:
        q = "SELECT count(*) FROM task_logs WHERE created_at < now() - make_interval(days => :d)"
        return int(await conn.scalar(text(q), {"d": days}) or 0)


async def read_load(base: str, ids: list[str], readers: int) -> list[tuple[float, float]]:
    """(start, latency) of every read: ``readers`` concurrent loops of GET /api/v1/roadmaps/{id}, until
    standard input closes (the measuring process says stop)."""
    import httpx

    reads: list[tuple[float, float]] = []
    headers = bench_headers("user", OWNER)
    stop = asyncio.ensure_future(asyncio.to_thread(sys.stdin.read))

    async def reader(client: httpx.AsyncClient) -> None:
        while not stop.done():
            started, t0 = time.time(), time.perf_counter()
            response = await client.get(f"/api/v1/roadmaps/{random.choice(ids)}", headers=headers)
            reads.append((started, time.perf_counter() - t0))
            assert response.status_code == 200, response.text

    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        await asyncio.gather(*(reader(client) for _ in range(readers)))
    return reads


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


async def readers_process(base: str, ids_file: str, readers: int) -> asyncio.subprocess.Process:
    """The readers in a process of their own: the pass's Python work must not slow the measuring loop
    (in production the pass and the readers' clients are different processes too)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--read", base, ids_file, str(readers),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def bench(args: argparse.Namespace, url: str) -> None:
    from app.core.orchestrator_factory import get_checkpointer
    from app.messaging import retention

    started = time.perf_counter()
    ids = await create_roadmaps(args.roadmaps, args.concepts, args.parallel)
    created_s = time.perf_counter() - started
    aged = await age_task_logs(ids[: len(ids) // 2], 31)
    before = await figures(ids)
    print(f"{len(ids)} roadmaps completed in {created_s:.1f} s ({args.concepts} concepts each); "
          f"task_logs rows of the first half aged 31 days: {aged}")  # fmt: skip

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(ids, handle)
    with api_server(url, workers=1, BACKGROUND_JOBS="false", DB_AUDIT_ON_SCRAPE="false") as base:
        warm = await readers_process(base, handle.name, args.readers)
        await asyncio.sleep(1.0)
        await warm.communicate(b"")
        quiet = args.baseline_seconds
        # One reader run: quiet, the pass, quiet again.
        reader = await readers_process(base, handle.name, args.readers)
        await asyncio.sleep(quiet)
        saver = await get_checkpointer()
        t0, p0 = time.time(), time.perf_counter()
        sweep = await retention.sweep_checkpoints(saver, seconds=0)
        purge = await retention.purge_task_logs(days=30)
        pass_s, t1 = time.perf_counter() - p0, time.time()
        await asyncio.sleep(quiet)
        out, _ = await reader.communicate(b"")
    os.unlink(handle.name)
    after = await figures(ids)
    old_left = await old_task_logs(30)
    _report(args, ids, before, after, old_left, sweep, purge, pass_s)
    _reads(args, json.loads(out), t0, t1)


def _report(args, ids, before, after, old_left, sweep, purge, pass_s) -> None:  # type: ignore[no-untyped-def]
    n = len(ids)
    print(f"\nretention pass at 0 s: {pass_s:.2f} s; threads released {sweep.threads_released}, "
          f"checkpoint rows {sum(sweep.rows.values())}; "
          f"task_logs deleted {purge.deleted} in {purge.batches} batches")  # fmt: skip
    print(f"\n{'table':<20}{'rows/roadmap before':>20}{'after':>10}{'bytes/roadmap before':>22}{'after':>10}")
    for table in TABLES:
        (r0, b0), (r1, b1) = before[table], after[table]
        print(f"{table:<20}{r0 / n:>20.2f}{r1 / n:>10.2f}{b0 / n:>22.0f}{b1 / n:>10.0f}")
    left = sum(after[t][0] for t in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"))
    print(f"\ncheckpoint rows of these roadmaps left: {left}; task_logs older than 30 days left: {old_left}")
    print("(bytes: DELETE frees space for reuse; files shrink only when VACUUM truncates, or VACUUM FULL)")


def _reads(args: argparse.Namespace, reads: list[list[float]], t0: float, t1: float) -> None:
    # Reads started within the pass, against those started in the quiet periods around it (those
    # that overlapped the pass's start left out).
    during = [lat for start, lat in reads if t0 <= start <= t1]
    quiet = [lat for start, lat in reads if start + lat < t0 or start > t1]
    print(f"\nGET /api/v1/roadmaps/{{id}}, {args.readers} concurrent readers (a process of their own):")
    for label, values in (("without the pass", quiet), ("during the pass", during)):
        print(f"  {label:<17} {len(values):>6} reads, p50 {1000 * statistics.median(values):6.1f} ms, "
              f"p99 {1000 * p99(values):6.1f} ms")  # fmt: skip
    print(f"  p99 ratio during/without: {p99(during) / p99(quiet):.2f} (target <= 1.5)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--read":
        base, ids_file, readers = sys.argv[2], sys.argv[3], int(sys.argv[4])
        with open(ids_file) as ids:
            reads = asyncio.run(read_load(base, json.load(ids), readers))
        print(json.dumps(reads))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--roadmaps", type=int, default=1000)
    parser.add_argument("--concepts", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8, help="roadmaps driven at once")
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    args = parser.parse_args()
    with bench_database() as url:
        use_in_this_process(url)
        os.environ.update(
            SERVICE_TYPE="celery_workflow",
            LLM_PROVIDER="offline",
            SEARCH_PROVIDER="offline",
            CHECKPOINT_RETENTION_SECONDS="86400",  # every thread stays until the pass
            JWT_SECRET_KEY="x" * 40,
        )
        from app import runtime

        runtime.current().name_service("celery_workflow")
        try:
            runtime.current().run(bench(args, url))
        finally:
            runtime.current().shutdown()
            import redis

            from app.config import connections
            from app.config.settings import get_settings

            prefix = get_settings().REDIS_KEY_PREFIX
            client = redis.Redis.from_url(connections.redis_url(get_settings()))
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)


if __name__ == "__main__":
    main()
