"""Roadmaps and their concepts. Every write that may be repeated (redelivery, resume) is idempotent."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import (
    ColumnElement,
    Integer,
    RowMapping,
    Select,
    String,
    Text,
    any_,
    bindparam,
    column,
    delete,
    func,
    select,
    text,
    update,
    values,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import (
    IN_PROGRESS,
    IN_PROGRESS_SQL,
    UNFINISHED_CONCEPT,
    Concept,
    ConceptStatus,
    OutboxMessage,
    Roadmap,
    RoadmapStatus,
    TaskLog,
)
from app.db.reader import DriverStatement, Reader, driver_statement

_ROADMAPS = Roadmap.__table__
_CONCEPTS = Concept.__table__
_SUMMARY = [c for c in _ROADMAPS.c if c.name != "owner"]
# The detail's concept columns, prefixed so they do not collide with the roadmap's own.
_CONCEPT_FIELDS = ("id", "position", "title", "status", "attempts", "content", "error")
_CONCEPT_COLUMNS = [_CONCEPTS.c[name].label(f"concept_{name}") for name in _CONCEPT_FIELDS]
# The API's reads, built and compiled for asyncpg once (see TaskLogRepository): a roadmap with its
# concepts in one LEFT JOIN; a page with the total as an uncorrelated subquery. Each exists for every
# owner (admins) and for one owner, a bind parameter (users see their own only): one statement either
# way, and the per-owner page is served by ix_roadmaps_owner_created_at.
_ONE = (
    select(*_SUMMARY, _ROADMAPS.c.owner, *_CONCEPT_COLUMNS)
    .select_from(_ROADMAPS.outerjoin(_CONCEPTS, _CONCEPTS.c.roadmap_id == _ROADMAPS.c.id))
    .where(_ROADMAPS.c.id == bindparam("roadmap_id"))
    .order_by(_CONCEPTS.c.position)
)
_OWNED = _ROADMAPS.c.owner == bindparam("owner")
_IN_PROGRESS_OF_OWNER = (
    select(func.count()).select_from(_ROADMAPS).where(_OWNED, _ROADMAPS.c.status.in_(IN_PROGRESS))
)
_VIEW = driver_statement(_ONE)
_VIEW_OWNED = driver_statement(_ONE.where(_OWNED))
# pg_advisory_xact_lock(key1, key2): key1 names the creation quota's lock (a constant no other lock of
# this database uses), key2 the owner.
_QUOTA_LOCK_CLASS = 0x0C4EA7E
_LOCK_OWNER = text("SELECT pg_advisory_xact_lock(:lock_class, hashtext(:owner))").bindparams(
    lock_class=_QUOTA_LOCK_CLASS
)
_COUNT = select(func.count()).select_from(_ROADMAPS)
# Of the given ids (checkpoint thread ids), the roadmaps that still need their thread: in progress, or
# finished less than the retention window ago.
_KEEPING_THREADS = text(
    f"SELECT id::text FROM roadmaps WHERE id = ANY(:ids)"
    f" AND (status IN {IN_PROGRESS_SQL} OR updated_at > now() - make_interval(secs => :seconds))"
)
_COUNT_OWNED = _COUNT.where(_OWNED)


def _page(count: Select[Any], *where: ColumnElement[bool]) -> DriverStatement:
    return driver_statement(
        select(*_SUMMARY, count.scalar_subquery().label("total"))
        .where(*where)
        .order_by(_ROADMAPS.c.created_at.desc(), _ROADMAPS.c.id)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )


_PAGE = _page(_COUNT)
_PAGE_OWNED = _page(_COUNT_OWNED, _OWNED)
_COUNT_ALL_READ = driver_statement(_COUNT)
_COUNT_OWNED_READ = driver_statement(_COUNT_OWNED)


class EveryOwner:
    """``owner=EVERY_OWNER``: an admin's read, of every owner's roadmaps. A marker rather than None,
    so that an unset owner (a missing subject) can never widen a read to everyone's rows."""


EVERY_OWNER = EveryOwner()


@dataclass(frozen=True)
class Deletion:
    """What ``delete_finished`` found and did: ``running`` non-empty means nothing was deleted."""

    found: int
    running: list[uuid.UUID]
    deleted: list[uuid.UUID]
    rows: dict[str, int]


@dataclass(frozen=True)
class Stalled:
    """A roadmap the watchdog claimed: how it stood, and how many of its concepts are unfinished."""

    roadmap_id: str
    status: str
    redispatches: int
    unfinished: int


@dataclass(frozen=True)
class RoadmapView:
    """A roadmap as the API reads it: its own columns and its concepts in order."""

    roadmap: dict[str, Any]
    owner: str | None
    concepts: list[dict[str, Any]]


class RoadmapRepository:
    """ORM for the workflow's writes, on a session (an instance); the API's reads, one round trip each,
    on a ``read()`` connection (static methods)."""

    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    async def lock_owner(self, owner: str) -> None:
        """Serialise ``owner``'s roadmap creations until this transaction ends (the in-progress cap):
        a second creation waits for the first to commit or roll back, then counts it."""
        await self.session.execute(_LOCK_OWNER, {"owner": owner})

    async def count_in_progress(self, owner: str) -> int:
        """``owner``'s roadmaps still in progress (the creation quota's cap): one index-only count."""
        return int(await self.session.scalar(_IN_PROGRESS_OF_OWNER, {"owner": owner}) or 0)

    async def create(self, topic: str, owner: str | None, concept_count: int) -> Roadmap:
        roadmap = Roadmap(
            topic=topic, owner=owner, requested_concepts=concept_count, status=RoadmapStatus.PENDING
        )
        self.session.add(roadmap)
        await self.session.flush()
        return roadmap

    async def create_once(
        self, topic: str, owner: str, concept_count: int, idempotency_key: str | None
    ) -> tuple[RowMapping, bool]:
        """The roadmap ``owner`` created with ``idempotency_key``: inserted now (True) or found (False).

        ``ON CONFLICT DO NOTHING`` on the (owner, key) index makes two concurrent first attempts
        store one roadmap: the second waits for the first's commit and then finds its row. Without a
        key the index (``WHERE idempotency_key IS NOT NULL``) never conflicts: always inserted.
        """
        inserted = (
            (
                await self.session.execute(
                    insert(Roadmap)
                    .values(
                        id=uuid.uuid4(),
                        topic=topic,
                        owner=owner,
                        requested_concepts=concept_count,
                        status=RoadmapStatus.PENDING,
                        idempotency_key=idempotency_key,
                    )
                    .on_conflict_do_nothing(
                        index_elements=["owner", "idempotency_key"],
                        index_where=Roadmap.idempotency_key.is_not(None),
                    )
                    .returning(*_ROADMAPS.c)
                )
            )
            .mappings()
            .first()
        )
        if inserted is not None:
            return inserted, True
        found = (
            (
                await self.session.execute(
                    select(_ROADMAPS).where(
                        _ROADMAPS.c.owner == owner, _ROADMAPS.c.idempotency_key == idempotency_key
                    )
                )
            )
            .mappings()
            .one()
        )
        return found, False

    async def get(self, roadmap_id: uuid.UUID) -> Roadmap | None:
        return await self.session.get(Roadmap, roadmap_id)  # type: ignore[union-attr]

    @staticmethod
    async def view(reader: Reader, roadmap_id: uuid.UUID, *, owner: str | EveryOwner) -> RoadmapView | None:
        """The roadmap and its concepts in one statement (a LEFT JOIN, concepts in order); None when it
        does not exist or belongs to someone other than ``owner``: the caller cannot tell which."""
        statement, params = _VIEW, {"roadmap_id": roadmap_id}
        if not isinstance(owner, EveryOwner):
            statement, params = _VIEW_OWNED, {**params, "owner": owner}
        rows = await reader.rows(statement, params)
        if not rows:
            return None
        first = rows[0]
        concepts = [
            {name: row[f"concept_{name}"] for name in _CONCEPT_FIELDS}
            for row in rows
            if row["concept_id"] is not None
        ]
        return RoadmapView({c.name: first[c.name] for c in _SUMMARY}, first["owner"], concepts)

    @staticmethod
    async def list(
        reader: Reader, *, owner: str | EveryOwner, limit: int, offset: int
    ) -> tuple[list[asyncpg.Record], int]:
        """A page of ``owner``'s roadmaps, newest first, and their total in one statement (see
        TaskLogRepository.list)."""
        page, count, params = _PAGE, _COUNT_ALL_READ, {"limit": limit, "offset": offset}
        if not isinstance(owner, EveryOwner):
            page, count, params = _PAGE_OWNED, _COUNT_OWNED_READ, {**params, "owner": owner}
        rows = await reader.rows(page, params)
        if rows:
            return rows, int(rows[0]["total"])
        return [], 0 if offset == 0 else int(await reader.value(count, params) or 0)

    async def set_status(self, roadmap_id: uuid.UUID, status: str, error: str | None = None) -> None:
        await self.session.execute(
            update(Roadmap).where(Roadmap.id == roadmap_id).values(status=status, error=error)
        )

    async def claim_stalled(self, stall_seconds: int, limit: int) -> list[Stalled]:
        """Roadmaps in progress whose row and concepts have not changed for ``stall_seconds``, claimed:
        one more re-dispatch counted and ``updated_at`` bumped in the same statement (``FOR UPDATE SKIP
        LOCKED``), so concurrent watchdogs never claim one twice and the next look waits a stall period.
        A roadmap whose task still waits in the outbox is waiting for the broker, not stalled."""
        last_concept_change = (
            select(func.max(Concept.updated_at))
            .where(Concept.roadmap_id == Roadmap.id)
            .correlate(Roadmap)
            .scalar_subquery()
        )
        unfinished = (
            select(func.count())
            .where(Concept.roadmap_id == Roadmap.id, Concept.status.in_(UNFINISHED_CONCEPT))
            .correlate(Roadmap)
            .scalar_subquery()
        )
        awaiting_broker = (
            select(OutboxMessage.id)
            .where(OutboxMessage.args[0].astext == func.cast(Roadmap.id, String))
            .correlate(Roadmap)
            .exists()
        )
        stalled_before = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, stall_seconds)
        stalled = (
            select(Roadmap.id)
            .where(
                Roadmap.status.in_(IN_PROGRESS),
                Roadmap.updated_at < stalled_before,
                func.coalesce(last_concept_change, Roadmap.updated_at) < stalled_before,
                ~awaiting_broker,
            )
            .order_by(Roadmap.updated_at)
            .limit(limit)
            .with_for_update(of=Roadmap, skip_locked=True)
            .correlate(None)  # its own scan of roadmaps, not the UPDATE's row
            .scalar_subquery()
        )
        rows = await self.session.execute(
            update(Roadmap)
            .where(Roadmap.id.in_(stalled))
            .values(redispatches=Roadmap.redispatches + 1, updated_at=func.now())
            .returning(Roadmap.id, Roadmap.status, Roadmap.redispatches, unfinished.cast(Integer))
        )
        return [Stalled(str(r[0]), r[1], int(r[2]), int(r[3])) for r in rows]

    async def keeping_threads(self, ids: Sequence[uuid.UUID], seconds: int) -> set[str]:
        """Of ``ids``, the roadmaps whose checkpoint thread retention must keep (see _KEEPING_THREADS)."""
        rows = await self.session.execute(_KEEPING_THREADS, {"ids": list(ids), "seconds": seconds})
        return {r[0] for r in rows}

    async def add_concepts(self, roadmap_id: uuid.UUID, titles: Sequence[str]) -> None:
        """Insert the planned concepts; a repeated plan (after a resume) inserts nothing twice."""
        if not titles:
            return
        rows = [
            {"id": uuid.uuid4(), "roadmap_id": roadmap_id, "position": i, "title": t[:500]}
            for i, t in enumerate(titles)
        ]
        await self.session.execute(
            insert(Concept).values(rows).on_conflict_do_nothing(constraint="uq_concepts_roadmap_position")
        )

    async def unfinished_concepts(self, roadmap_id: uuid.UUID) -> list[Concept]:
        """Concepts not yet tried, or cut off (a crash, an outage); not those that failed for real."""
        return list(
            await self.session.scalars(
                select(Concept)
                .where(Concept.roadmap_id == roadmap_id, Concept.status.in_(UNFINISHED_CONCEPT))
                .order_by(Concept.position)
            )
        )

    async def write_content(self, concept_id: uuid.UUID, content: str) -> bool:
        """Store content unless the concept is already completed; True when this call wrote it."""
        result = await self.session.execute(
            update(Concept)
            .where(Concept.id == concept_id, Concept.status != ConceptStatus.COMPLETED)
            .values(status=ConceptStatus.COMPLETED, content=content, error=None)
            .returning(Concept.id)
        )
        return result.first() is not None

    async def start_concepts(self, concept_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, None]:
        """Mark concepts started (one more attempt each), in one statement for a wave (app.db.batch)."""
        await self.session.execute(
            update(Concept)
            .where(Concept.id.in_(concept_ids), Concept.status != ConceptStatus.COMPLETED)
            .values(status=ConceptStatus.GENERATING, attempts=Concept.attempts + 1, error=None)
        )
        return dict.fromkeys(concept_ids)

    async def write_contents(self, contents: dict[uuid.UUID, str]) -> dict[uuid.UUID, bool]:
        """write_content for several concepts in one statement; for each, whether this call wrote it."""
        rows = values(column("id", UUID(as_uuid=True)), column("content", Text), name="new").data(
            list(contents.items())
        )
        result = await self.session.execute(
            update(Concept)
            .where(Concept.id == rows.c.id, Concept.status != ConceptStatus.COMPLETED)
            .values(status=ConceptStatus.COMPLETED, content=rows.c.content, error=None)
            .returning(Concept.id)
        )
        written = set(result.scalars().all())
        return {concept_id: concept_id in written for concept_id in contents}

    async def fail_concept(self, concept_id: uuid.UUID, error: str) -> None:
        await self.session.execute(
            update(Concept)
            .where(Concept.id == concept_id, Concept.status != ConceptStatus.COMPLETED)
            .values(status=ConceptStatus.FAILED, error=error[:2000])
        )

    async def concept_counts(self, roadmap_id: uuid.UUID) -> dict[str, int]:
        rows = await self.session.execute(
            select(Concept.status, func.count())
            .where(Concept.roadmap_id == roadmap_id)
            .group_by(Concept.status)
        )
        return {status: int(n) for status, n in rows.all()}

    async def delete_finished(
        self, *, owner: str | EveryOwner, roadmap_id: uuid.UUID | None = None
    ) -> Deletion:
        """Delete ``owner``'s roadmap ``roadmap_id`` (or all of ``owner``'s), with their concepts, task
        events and unpublished tasks, in the session's transaction; nothing at all when one of them
        is still in progress (its workers may be mid-step: see the DELETE route).

        The rows are locked first (``FOR UPDATE``), so a status changing meanwhile is seen after its
        commit, never half-way; the task events are those whose task_id is the roadmap's id.
        """
        query = select(_ROADMAPS.c.id, _ROADMAPS.c.status).with_for_update()
        if roadmap_id is not None:
            query = query.where(_ROADMAPS.c.id == roadmap_id)
        if not isinstance(owner, EveryOwner):
            query = query.where(_ROADMAPS.c.owner == owner)
        rows = (await self.session.execute(query)).all()
        running = [r.id for r in rows if r.status in IN_PROGRESS]
        if not rows or running:
            return Deletion(len(rows), running, [], {})
        ids = [r.id for r in rows]
        as_uuids = bindparam("ids", ids, type_=ARRAY(UUID(as_uuid=True)))
        as_text = bindparam("names", [str(i) for i in ids], type_=ARRAY(String))
        statements = {
            "concepts": delete(Concept).where(Concept.roadmap_id == any_(as_uuids)),
            "roadmaps": delete(Roadmap).where(Roadmap.id == any_(as_uuids)),
            "task_logs": delete(TaskLog).where(TaskLog.task_id == any_(as_text)),
            # A task still waiting for the broker about a roadmap that is gone would find nothing.
            "outbox": delete(OutboxMessage).where(OutboxMessage.args[0].astext == any_(as_text)),
        }
        counts = {}
        for table, statement in statements.items():
            result = await self.session.execute(statement.execution_options(synchronize_session=False))
            counts[table] = int(result.rowcount or 0)  # type: ignore[attr-defined]
        return Deletion(len(rows), [], ids, counts)
