"""Validation shared by request bodies, which clients check against JSON Schema."""

from __future__ import annotations

from typing import Any


def integral_float_to_int(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer; strict models (which reject true and "3") must accept it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
