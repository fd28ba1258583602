"""Data lifecycle: what the project writes is removed once nothing can need it.

* **Checkpoint threads.** A roadmap's LangGraph thread (thread id = roadmap id: ~6 checkpoints, their
  blobs and ~10 writes) is what a stopped workflow resumes from. Only pending, planning and generating
  roadmaps can resume; a completed or failed one never runs again, so its thread is released
  CHECKPOINT_RETENTION_SECONDS after it finished: at once by the worker that finished it (0), or by the
  sweep. The sweep also releases threads whose roadmap no longer exists. Deletion always goes through
  the saver's own API (``aprune(ids, strategy="delete")`` for a batch, ``adelete_thread`` for one):
  LangGraph owns its tables and their layout; finding thread ids is a read-only query. Only the
  workflow worker has a saver (API processes open no checkpointer pool, and the budget counts none
  there), so the API's retention round *asks* for a sweep (a task on the
  ``roadmap_workflow`` queue) instead of opening one.
* **task_logs.** Rows older than TASK_LOG_RETENTION_DAYS are deleted in batches of RETENTION_BATCH_SIZE,
  each its own short transaction with a ``lock_timeout``, the connection returned between batches
  (a long DELETE would hold row locks and one connection for minutes, and bloat one transaction's WAL).
* **One at a time.** Every batch takes a transaction-scoped advisory lock with ``pg_try_advisory_xact_lock``:
  at most one batch runs in the fleet at once, no connection is held between batches to keep a lock,
  and a process that dies mid-round leaves no lock behind. A round that finds the lock taken leaves the
  work to the process that holds it.

The round runs in every API process next to the relay and the watchdog (app.api.background), and uses
one connection of that process's pool at a time, never more.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.config.settings import get_settings
from app.core.checkpointer_saver import BoundedPostgresSaver, CheckpointerTimeout
from app.core.deadline import run_within
from app.core.metrics import DATA_OLDEST_ROW_AGE, DATA_TABLE_BYTES, RETENTION_ROWS_DELETED
from app.db.session import autocommit, safe_session
from app.messaging.names import RELEASE_CHECKPOINTS
from app.messaging.send import send_by_name
from app.repositories.roadmaps import RoadmapRepository

log = structlog.get_logger("app.retention")

# pg_try_advisory_xact_lock key of retention batches: any constant no other lock of the app uses.
RETENTION_LOCK_KEY = 0x72657461696E  # "retain"
CHECKPOINT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
GROWING_TABLES = (*CHECKPOINT_TABLES, "task_logs", "outbox")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# aprune(strategy="delete") came with langgraph-checkpoint-postgres 3.x; adelete_thread per thread before.
_HAS_PRUNE = hasattr(AsyncPostgresSaver, "aprune")
_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)").bindparams(key=RETENTION_LOCK_KEY)
_LOCK_TIMEOUT = text("SELECT set_config('lock_timeout', :value, true)")
# Oldest first through ix_task_logs_created_at; SKIP LOCKED: a row a DELETE of its roadmap holds is
# that DELETE's to remove, not a reason to wait.
_PURGE_TASK_LOGS = text(
    "WITH doomed AS (SELECT id FROM task_logs"
    " WHERE created_at < now() - make_interval(days => :days)"
    " ORDER BY created_at LIMIT :batch FOR UPDATE SKIP LOCKED)"
    " DELETE FROM task_logs t USING doomed WHERE t.id = doomed.id"
)
_DELETE_EVENTS = text("DELETE FROM task_logs WHERE task_id = ANY(CAST(:ids AS text[]))")
# The next page of thread ids in LangGraph's tables, each scanned by its primary key (thread_id first).
_THREAD_PAGE = " UNION ".join(
    f"(SELECT DISTINCT thread_id FROM {t} WHERE thread_id > %(after)s ORDER BY thread_id LIMIT %(n)s)"
    for t in CHECKPOINT_TABLES
)
_THREAD_PAGE = f"SELECT thread_id FROM ({_THREAD_PAGE}) page ORDER BY thread_id LIMIT %(n)s"
_THREAD_ROWS = "SELECT " + ", ".join(
    f"(SELECT count(*) FROM {t} WHERE thread_id = ANY(%(ids)s)) AS {t}" for t in CHECKPOINT_TABLES
)


@dataclass
class TaskLogPurge:
    deleted: int = 0
    batches: int = 0
    locked_out: bool = False  # another process held the retention lock


@dataclass
class CheckpointSweep:
    threads_seen: int = 0
    threads_released: int = 0
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKPOINT_TABLES, 0))


async def _batch(statement: Any, params: dict[str, Any]) -> int | None:
    """One batch in its own transaction under the retention lock: rows deleted, or None when another
    process holds the lock."""
    async with safe_session() as session:
        await session.execute(
            _LOCK_TIMEOUT, {"value": f"{round(get_settings().RETENTION_LOCK_TIMEOUT * 1000)}ms"}
        )
        if not await session.scalar(_LOCK):
            return None
        return int((await session.execute(statement, params)).rowcount or 0)  # type: ignore[attr-defined]


async def purge_task_logs(*, days: int | None = None, max_batches: int | None = None) -> TaskLogPurge:
    """Delete task_logs rows older than ``days`` (TASK_LOG_RETENTION_DAYS; 0 keeps them), batch by batch."""
    settings = get_settings()
    days = settings.TASK_LOG_RETENTION_DAYS if days is None else days
    report = TaskLogPurge()
    if days <= 0:
        return report
    params = {"days": days, "batch": settings.RETENTION_BATCH_SIZE}
    while max_batches is None or report.batches < max_batches:
        deleted = await _batch(_PURGE_TASK_LOGS, params)
        if deleted is None:
            report.locked_out = True
            break
        report.batches += 1
        report.deleted += deleted
        if deleted:
            RETENTION_ROWS_DELETED.labels("task_logs", "retention").inc(deleted)
        if deleted < settings.RETENTION_BATCH_SIZE:
            break
        await asyncio.sleep(settings.RETENTION_BATCH_PAUSE_SECONDS)  # holding no connection
    return report


def _request_sweep() -> None:
    # Not through the outbox: a lost sweep costs nothing (the next round asks again), and a broker
    # outage must not fill the outbox with one request per round and process.
    send_by_name(RELEASE_CHECKPOINTS, [], retry=False)


async def retention_round() -> TaskLogPurge:
    """The API's round: task_logs batches, then a checkpoint sweep asked of the workflow worker."""
    report = await purge_task_logs()
    if report.locked_out:
        return report  # the process holding the lock runs this round, sweep request included
    try:
        await asyncio.wait_for(asyncio.to_thread(_request_sweep), get_settings().OUTBOX_PUBLISH_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - the next round asks again
        log.warning("checkpoint_sweep_not_requested", error=f"{type(error).__name__}: {error}"[:300])
    if report.deleted:
        log.info("task_logs_purged", rows=report.deleted, batches=report.batches)
    return report


async def _threads_to_keep(thread_ids: Sequence[str], seconds: int) -> set[str]:
    ids = [uuid.UUID(t) for t in thread_ids if _UUID.match(t)]
    if not ids:
        return set()
    async with autocommit() as conn:
        return await RoadmapRepository(conn).keeping_threads(ids, seconds)


async def _thread_rows(saver: BoundedPostgresSaver, thread_ids: list[str]) -> dict[str, int]:
    async def count() -> dict[str, int]:
        async with saver.conn.connection() as conn:  # type: ignore[union-attr]
            cur = await conn.execute(_THREAD_ROWS, {"ids": thread_ids})
            return {k: int(v) for k, v in (await cur.fetchone()).items()}

    return await run_within(saver.deadline, "checkpointer thread rows", count(), CheckpointerTimeout)


async def _release(
    saver: BoundedPostgresSaver, thread_ids: list[str], reason: str, sweep: CheckpointSweep
) -> None:
    """Delete ``thread_ids`` through the saver, counting their rows first for the metric."""
    rows = await _thread_rows(saver, thread_ids)
    if len(thread_ids) > 1 and _HAS_PRUNE:
        # The saver's bulk form: three statements (= ANY) for the whole step in one transaction, not
        # three per thread; what made a pass of 1000 threads cost concurrent reads 2.4x their p99.
        await saver.aprune(thread_ids, strategy="delete")
    else:
        for thread_id in thread_ids:
            await saver.adelete_thread(thread_id)
    sweep.threads_released += len(thread_ids)
    for table, n in rows.items():
        sweep.rows[table] += n
        if n:
            RETENTION_ROWS_DELETED.labels(table, reason).inc(n)


async def release_threads(
    saver: BoundedPostgresSaver,
    thread_ids: Sequence[str],
    *,
    seconds: int | None = None,
    reason: str = "retention",
) -> CheckpointSweep:
    """Release the threads of ``thread_ids`` that nothing can need any more (finished long enough ago, or
    no roadmap: ``RoadmapRepository.keeping_threads``); keep the rest."""
    settings = get_settings()
    seconds = settings.CHECKPOINT_RETENTION_SECONDS if seconds is None else seconds
    sweep = CheckpointSweep(threads_seen=len(thread_ids))
    keep = await _threads_to_keep(thread_ids, seconds)
    # Only ids that name a roadmap (a UUID) are this project's threads; anything else is left alone.
    doomed = [t for t in thread_ids if _UUID.match(t) and t not in keep]
    for start in range(0, len(doomed), settings.CHECKPOINT_SWEEP_BATCH):
        await _release(saver, doomed[start : start + settings.CHECKPOINT_SWEEP_BATCH], reason, sweep)
    return sweep


async def _thread_page(saver: BoundedPostgresSaver, after: str, n: int) -> list[str]:
    async def page() -> list[str]:
        async with saver.conn.connection() as conn:  # type: ignore[union-attr]
            cur = await conn.execute(_THREAD_PAGE, {"after": after, "n": n})
            return [row["thread_id"] for row in await cur.fetchall()]

    return await run_within(saver.deadline, "checkpointer thread page", page(), CheckpointerTimeout)


async def sweep_checkpoints(saver: BoundedPostgresSaver, *, seconds: int | None = None) -> CheckpointSweep:
    """Every thread in the checkpoint tables, page by page: release those of finished or deleted roadmaps."""
    total = CheckpointSweep()
    after, size = "", get_settings().CHECKPOINT_SWEEP_BATCH
    while page := await _thread_page(saver, after, size):
        step = await release_threads(saver, page, seconds=seconds)
        total.threads_seen += step.threads_seen
        total.threads_released += step.threads_released
        for table, n in step.rows.items():
            total.rows[table] += n
        after = page[-1]
        if len(page) < size:
            break
        await asyncio.sleep(get_settings().RETENTION_BATCH_PAUSE_SECONDS)  # let the readers in
    if total.threads_released:
        log.info("checkpoint_threads_released", threads=total.threads_released, **total.rows)
    return total


async def release_finished_thread(saver: BoundedPostgresSaver, roadmap_id: str) -> bool:
    """Right after a roadmap finished: its thread goes at once when CHECKPOINT_RETENTION_SECONDS is 0
    (the sweep takes it later otherwise, or if this fails). True when it was released here."""
    if get_settings().CHECKPOINT_RETENTION_SECONDS:
        return False
    try:
        sweep = CheckpointSweep()
        await _release(saver, [roadmap_id], "retention", sweep)
    except Exception as error:  # noqa: BLE001 - the sweep releases it later; the roadmap is done
        log.warning(
            "checkpoint_release_failed", roadmap_id=roadmap_id, error=f"{type(error).__name__}: {error}"[:300]
        )
        return False
    return True


async def delete_task_logs(roadmap_ids: Sequence[str]) -> int:
    """A deleted roadmap's task events once more (those flushed after its deletion), one statement."""
    async with autocommit() as conn:
        result = await conn.execute(_DELETE_EVENTS, {"ids": list(roadmap_ids)})
    deleted = int(result.rowcount or 0)
    if deleted:
        RETENTION_ROWS_DELETED.labels("task_logs", "deleted").inc(deleted)
    return deleted


# --- what the tables hold (the admin connections view, /metrics) -------------------------------------

_SIZES = text(
    "SELECT t.name, pg_total_relation_size(to_regclass(t.name)) AS bytes, s.n_live_tup AS rows_estimate"
    " FROM unnest(CAST(:names AS text[])) AS t(name)"
    " LEFT JOIN pg_stat_user_tables s ON s.relid = to_regclass(t.name)"
)
# The oldest row's age, each through an index: task_logs by created_at, the outbox by its id (ids grow
# with time); NULL when the table is empty.
_OLDEST = text(
    "SELECT extract(epoch FROM now() - (SELECT min(created_at) FROM task_logs)) AS task_logs,"
    " extract(epoch FROM now() - (SELECT created_at FROM outbox ORDER BY id LIMIT 1)) AS outbox"
)
# LangGraph's tables carry no timestamp column: the checkpoint's own ts (ISO 8601, UTC, so the smallest
# string is the oldest). A scan, so only in the admin view, never at each scrape; retention keeps it small.
_OLDEST_CHECKPOINT = text(
    "SELECT extract(epoch FROM now() - min(checkpoint->>'ts')::timestamptz) FROM checkpoints"
)


async def storage(conn: AsyncConnection, *, checkpoint_age: bool = False) -> dict[str, dict[str, Any]]:
    """Per growing table: bytes (pg_total_relation_size, indexes and TOAST included), the planner's row
    estimate and the oldest row's age in seconds. A table that is not in this database (the checkpoint
    tables with CHECKPOINTER_DATABASE_URL set) reads bytes None."""
    tables: dict[str, dict[str, Any]] = {}
    for row in (await conn.execute(_SIZES, {"names": list(GROWING_TABLES)})).mappings():
        tables[row["name"]] = {
            "bytes": row["bytes"],
            "rows_estimate": None if row["rows_estimate"] is None else int(row["rows_estimate"]),
            "oldest_row_age_seconds": None,
        }
    oldest = (await conn.execute(_OLDEST)).mappings().one()
    for name in ("task_logs", "outbox"):
        tables[name]["oldest_row_age_seconds"] = (
            None if oldest[name] is None else round(float(oldest[name]), 1)
        )
    if checkpoint_age and tables["checkpoints"]["bytes"] is not None:
        age = await conn.scalar(_OLDEST_CHECKPOINT)
        tables["checkpoints"]["oldest_row_age_seconds"] = None if age is None else round(float(age), 1)
    return tables


def publish_storage(tables: dict[str, dict[str, Any]]) -> None:
    """The figures as gauges (data_table_bytes, data_oldest_row_age_seconds): an empty table's age is 0."""
    environment = get_settings().ENVIRONMENT
    for name, figures in tables.items():
        if figures["bytes"] is not None:
            DATA_TABLE_BYTES.labels(environment, name).set(figures["bytes"])
        if name in ("task_logs", "outbox"):
            DATA_OLDEST_ROW_AGE.labels(environment, name).set(figures["oldest_row_age_seconds"] or 0)
