"""API shapes of Tavily keys. A key is write-only: responses show it masked."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, field_validator

from app.schemas.types import integral_float_to_int

KEY_PATTERN = r"^[!-~]+$"


def mask_key(key: str) -> str:
    return f"{key[:4]}…{key[-4:]}" if len(key) > 12 else "…"


class TavilyKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # true is not 1, "5" is not 5

    # Printable ASCII without spaces, like every real API key (and never a NUL PostgreSQL would refuse).
    api_key: SecretStr = Field(min_length=8, max_length=200, json_schema_extra={"pattern": KEY_PATTERN})
    remaining_credits: int = Field(default=1000, ge=0, le=10_000_000)

    _integral = field_validator("remaining_credits", mode="before")(integral_float_to_int)

    @field_validator("api_key")
    @classmethod
    def _printable(cls, value: SecretStr) -> SecretStr:
        if not re.fullmatch(KEY_PATTERN, value.get_secret_value()):
            raise ValueError("api_key must be printable ASCII without spaces")
        return value


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
