"""API shapes of roadmaps and concepts."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from app.config.settings import get_settings
from app.schemas.types import integral_float_to_int


def _state_the_cap(schema: dict[str, Any], _model: type) -> None:
    """The OpenAPI schema states ROADMAP_MAX_CONCEPTS as the maximum, read when the schema is built
    (the app's first /openapi.json), like the validator reads it per request."""
    concept_count = schema["properties"]["concept_count"]
    for option in concept_count.get("anyOf", [concept_count]):
        if option.get("type") == "integer":
            option["maximum"] = get_settings().ROADMAP_MAX_CONCEPTS


_WHITESPACE = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


class RoadmapCreate(BaseModel):
    # strict: true is not 1, "5" is not 5
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_state_the_cap)

    # Two visible characters at least, and no NUL (PostgreSQL text cannot store it).
    topic: str = Field(min_length=2, max_length=300, pattern=r"^\s*[^\s\x00][^\x00]*[^\s\x00]\s*$")
    concept_count: int | None = Field(default=None, ge=1)

    _integral = field_validator("concept_count", mode="before")(integral_float_to_int)

    @field_validator("concept_count")
    @classmethod
    def _within_cap(cls, value: int | None) -> int | None:
        # ROADMAP_MAX_CONCEPTS is read per request, not captured when this module is imported; the
        # error is the one ``le=`` would give.
        cap = get_settings().ROADMAP_MAX_CONCEPTS
        if value is not None and value > cap:
            raise PydanticCustomError(
                "less_than_equal", "Input should be less than or equal to {le}", {"le": cap}
            )
        return value

    @field_validator("topic")
    @classmethod
    def _topic_has_text(cls, value: str) -> str:
        # Whitespace as the pattern's \s sees it (Unicode White_Space, pydantic's Rust regex), not as
        # str.split() does: that also splits on \x1c-\x1f, and a topic the schema accepts was refused.
        value = " ".join(part for part in _WHITESPACE.split(value) if part)
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


class RoadmapErasure(BaseModel):
    """What DELETE /api/v1/admin/owners/{owner}/roadmaps removed (0 the second time: idempotent)."""

    owner: str
    deleted: int
