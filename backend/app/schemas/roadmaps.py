"""API shapes of roadmaps and concepts."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.config.settings import get_settings
from app.schemas.types import integral_float_to_int


class RoadmapCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # true is not 1, "5" is not 5

    # Two visible characters at least, and no NUL (PostgreSQL text cannot store it).
    topic: str = Field(min_length=2, max_length=300, pattern=r"^\s*[^\s\x00][^\x00]*[^\s\x00]\s*$")
    # The cap is ROADMAP_MAX_CONCEPTS, read when the app is built so the OpenAPI schema states it.
    concept_count: int | None = Field(default=None, ge=1, le=get_settings().ROADMAP_MAX_CONCEPTS)

    _integral = field_validator("concept_count", mode="before")(integral_float_to_int)

    @field_validator("topic")
    @classmethod
    def _topic_has_text(cls, value: str) -> str:
        value = " ".join(value.split())
        if len(value) < 2:
            raise ValueError("topic must contain at least 2 visible characters")
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
