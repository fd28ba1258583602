"""Roadmaps and their concepts. Every write that may be repeated (redelivery, resume) is idempotent."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.db.models import Concept, Roadmap


class RoadmapRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, topic: str, owner: str | None, concept_count: int) -> Roadmap:
        roadmap = Roadmap(topic=topic, owner=owner, requested_concepts=concept_count, status="pending")
        self.session.add(roadmap)
        await self.session.flush()
        return roadmap

    async def get(self, roadmap_id: uuid.UUID, *, with_concepts: bool = False) -> Roadmap | None:
        query = select(Roadmap).where(Roadmap.id == roadmap_id)
        if with_concepts:
            query = query.options(selectinload(Roadmap.concepts))
        return await self.session.scalar(query)

    async def list(self, *, limit: int, offset: int) -> tuple[list[Roadmap], int]:
        rows = await self.session.scalars(
            select(Roadmap).order_by(Roadmap.created_at.desc(), Roadmap.id).limit(limit).offset(offset)
        )
        total = await self.session.scalar(select(func.count()).select_from(Roadmap))
        return list(rows), int(total or 0)

    async def set_status(self, roadmap_id: uuid.UUID, status: str, error: str | None = None) -> None:
        await self.session.execute(
            update(Roadmap).where(Roadmap.id == roadmap_id).values(status=status, error=error)
        )

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
        return list(
            await self.session.scalars(
                select(Concept)
                .where(Concept.roadmap_id == roadmap_id, Concept.status != "completed")
                .order_by(Concept.position)
            )
        )

    async def start_concept(self, concept_id: uuid.UUID) -> None:
        await self.session.execute(
            update(Concept)
            .where(Concept.id == concept_id, Concept.status != "completed")
            .values(status="generating", attempts=Concept.attempts + 1, error=None)
        )

    async def write_content(self, concept_id: uuid.UUID, content: str) -> bool:
        """Store content unless the concept is already completed; True when this call wrote it."""
        result = await self.session.execute(
            update(Concept)
            .where(Concept.id == concept_id, Concept.status != "completed")
            .values(status="completed", content=content, error=None)
            .returning(Concept.id)
        )
        return result.first() is not None

    async def fail_concept(self, concept_id: uuid.UUID, error: str) -> None:
        await self.session.execute(
            update(Concept)
            .where(Concept.id == concept_id, Concept.status != "completed")
            .values(status="failed", error=error[:2000])
        )

    async def concept_counts(self, roadmap_id: uuid.UUID) -> dict[str, int]:
        rows = await self.session.execute(
            select(Concept.status, func.count())
            .where(Concept.roadmap_id == roadmap_id)
            .group_by(Concept.status)
        )
        return {status: int(n) for status, n in rows.all()}
