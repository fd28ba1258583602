"""API shapes of roadmaps and concepts."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.config.settings import get_settings


class RoadmapCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=2, max_length=300)
    concept_count: int | None = Field(default=None, ge=1, le=200)

    @field_validator("topic")
    @classmethod
    def _topic_has_text(cls, value: str) -> str:
        value = " ".join(value.split())
        if len(value) < 2:
            raise ValueError("topic must contain at least 2 visible characters")
        return value

    @field_validator("concept_count")
    @classmethod
    def _within_limit(cls, value: int | None) -> int | None:
        limit = get_settings().ROADMAP_MAX_CONCEPTS
        if value is not None and value > limit:
            raise ValueError(f"concept_count must be <= {limit}")
        return value


class RoadmapAccepted(BaseModel):
    id: uuid.UUID
    status: str


class ConceptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    position: int
    title: str
    status: str
    attempts: int
    content: str | None
    error: str | None


class RoadmapSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    topic: str
    status: str
    requested_concepts: int
    error: str | None
    created_at: datetime
    updated_at: datetime


class RoadmapDetail(RoadmapSummary):
    concepts: list[ConceptOut]
    concept_status: dict[str, int]


class RoadmapPage(BaseModel):
    items: list[RoadmapSummary]
    total: int
    limit: int
    offset: int
