"""API shapes of Tavily keys. A key is write-only: responses show it masked."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer


def mask_key(key: str) -> str:
    return f"{key[:4]}…{key[-4:]}" if len(key) > 12 else "…"


class TavilyKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr = Field(min_length=8, max_length=200)
    remaining_credits: int = Field(default=1000, ge=0, le=10_000_000)


class TavilyKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    api_key: str
    remaining_credits: int
    status: str
    last_used_at: datetime | None
    created_at: datetime

    @field_serializer("api_key")
    def _masked(self, value: str) -> str:
        return mask_key(value)
