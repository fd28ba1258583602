"""The schema's one home. Alembic's migrations are written against these models."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so migrations can drop what they created.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# LangGraph's checkpointer owns these (created by AsyncPostgresSaver.setup() in the prestart step);
# Alembic must neither create nor drop them.
LANGGRAPH_TABLES = frozenset(
    {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"}
)


def alembic_include_name(name: str | None, type_: str, _parent_names: object) -> bool:
    return not (type_ == "table" and name in LANGGRAPH_TABLES)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class RoadmapStatus(StrEnum):
    PENDING = "pending"
    PLANNING = "planning"
    GENERATING = "generating"
    COMPLETED = "completed"
    FAILED = "failed"


class ConceptStatus(StrEnum):
    PENDING = "pending"
    GENERATING = "generating"
    COMPLETED = "completed"
    FAILED = "failed"


# A roadmap that can still move (the in-progress cap, the watchdog, retention keep its checkpoints),
# and one that never will again; a concept still to be written.
IN_PROGRESS = (RoadmapStatus.PENDING, RoadmapStatus.PLANNING, RoadmapStatus.GENERATING)
FINISHED = (RoadmapStatus.COMPLETED, RoadmapStatus.FAILED)
UNFINISHED_CONCEPT = (ConceptStatus.PENDING, ConceptStatus.GENERATING)


def _sql_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


IN_PROGRESS_SQL = _sql_list(IN_PROGRESS)


class Roadmap(Base):
    """A learning roadmap for a topic; its workflow plans the concepts."""

    __tablename__ = "roadmaps"
    __table_args__ = (
        CheckConstraint(f"status IN {_sql_list(RoadmapStatus)}", name="status"),
        Index(
            "uq_roadmaps_owner_idempotency_key",
            "owner",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # The watchdog's scan: only roadmaps still in progress, by when they last moved.
        Index(
            "ix_roadmaps_in_progress_updated_at",
            "updated_at",
            postgresql_where=text(f"status IN {IN_PROGRESS_SQL}"),
        ),
        # A user's page (WHERE owner = :owner ORDER BY created_at DESC) reads its rows in order, and
        # counting them (or those in progress) touches only this index, not the whole table.
        Index("ix_roadmaps_owner_created_at", "owner", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    topic: Mapped[str] = mapped_column(String(500), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=RoadmapStatus.PENDING)
    requested_concepts: Mapped[int] = mapped_column(Integer, nullable=False, default=30)
    owner: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    # The client's Idempotency-Key: a retried POST finds the roadmap its first attempt stored.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # How often the watchdog re-dispatched it; past ROADMAP_MAX_REDISPATCHES it fails with a reason.
    redispatches: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )

    concepts: Mapped[list[Concept]] = relationship(
        back_populates="roadmap", order_by="Concept.position", cascade="all, delete-orphan"
    )


class Concept(Base):
    """One concept of a roadmap, with its generated content."""

    __tablename__ = "concepts"
    __table_args__ = (
        UniqueConstraint("roadmap_id", "position", name="uq_concepts_roadmap_position"),
        CheckConstraint(f"status IN {_sql_list(ConceptStatus)}", name="status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    roadmap_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("roadmaps.id", ondelete="CASCADE"), nullable=False, index=True
    )
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    title: Mapped[str] = mapped_column(String(500), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=ConceptStatus.PENDING)
    content: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )

    roadmap: Mapped[Roadmap] = relationship(back_populates="concepts")


class TavilyApiKey(Base):
    """A web-search API key and what is left of its credits."""

    __tablename__ = "tavily_api_keys"
    __table_args__ = (
        CheckConstraint("remaining_credits >= 0", name="credits_non_negative"),
        CheckConstraint("status IN ('active', 'disabled', 'exhausted')", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    api_key: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    remaining_credits: Mapped[int] = mapped_column(Integer, nullable=False, default=1000)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="active")
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()

    def __repr__(self) -> str:  # the key itself never appears in a repr
        return f"TavilyApiKey(id={self.id!r}, status={self.status!r}, credits={self.remaining_credits!r})"


class TaskLog(Base):
    """A structured task event, written in batches by the ``logs`` queue."""

    __tablename__ = "task_logs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    task_name: Mapped[str] = mapped_column(String(200), nullable=False)
    queue: Mapped[str | None] = mapped_column(String(50))
    event: Mapped[str] = mapped_column(String(100), nullable=False)
    level: Mapped[str] = mapped_column(String(10), nullable=False, default="info")
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False, index=True
    )


class OutboxMessage(Base):
    """A task to publish, stored in the transaction that made it necessary (the transactional outbox).

    The row commits with the roadmap it is about, so a broker that is down or slow never loses work and
    never holds a request: the API publishes right after its commit, and the relay publishes whatever
    is left (``app.messaging.outbox``). A published message's row is deleted.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    task_name: Mapped[str] = mapped_column(String(200), nullable=False)
    args: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, default=list)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    # The relay leaves a message alone until then: the publisher right after the commit goes first.
    available_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
