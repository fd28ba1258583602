"""Reading settings, and stopping with one line naming the variable when a value is invalid.

``Settings`` inherits ``load`` (this process's environment and ``ENV_FILE``) and ``from_mapping`` (the
code's defaults and the values given: another process's environment, for the budget CLI and the load
harness) from ``LoadableSettings``. Nothing here imports the ``Settings`` class, so ``settings.py`` can
build on it without a cycle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from typing import Self, get_args

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings


class InvalidSettingsError(SystemExit):
    """An invalid value in the environment. A ``SystemExit`` so that uvicorn, celery and the CLIs print
    the one-line message and exit non-zero, without a traceback that would bury the variable name."""


@cache
def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """Fields whose value is never echoed, not even in a validation message."""
    return frozenset(
        name
        for name, field in model.model_fields.items()
        if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
    )


def _one_line(error: ValidationError, model: type[BaseModel]) -> str:
    """Pydantic's multi-line report as one line that names each variable and what is allowed."""
    parts = []
    for item in error.errors():
        name = ".".join(str(p) for p in item["loc"]) or "settings"
        message = item["msg"].removeprefix("Value error, ")
        if item["loc"] and name not in secret_fields(model) and "input" in item:
            parts.append(f"{name}={item['input']!r}: {message}")
        else:
            parts.append(f"{name}: {message}")
    return "invalid configuration: " + "; ".join(parts)


@cache
def _declared(model: type[BaseSettings]) -> type[BaseSettings]:
    """``model`` reading only the values it is given, never this process's environment."""

    class Declared(model):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, **_sources):  # type: ignore[no-untyped-def,override]
            return (init_settings,)

    return Declared


class LoadableSettings(BaseSettings):
    @classmethod
    def load(cls, **overrides: object) -> Self:
        """Read the environment (and ``ENV_FILE`` when set), or stop with one line naming the variable."""
        env_file = os.environ.get("ENV_FILE") or None
        if env_file is not None and not os.path.isfile(env_file):
            # pydantic-settings skips a missing env file silently: every value in it would be lost unseen.
            raise InvalidSettingsError(
                f"ENV_FILE={env_file!r}: no such file (relative to {os.getcwd()}); "
                "fix the path or unset ENV_FILE"
            )
        try:
            return cls(_env_file=env_file, **overrides)  # type: ignore[call-arg]
        except ValidationError as exc:
            raise InvalidSettingsError(_one_line(exc, cls)) from None

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Self:
        """The settings another process would get from ``values`` (its environment or an env file)."""
        known = {k: v for k, v in values.items() if k in cls.model_fields}
        try:
            return _declared(cls)(**known)  # type: ignore[return-value]
        except ValidationError as exc:
            raise InvalidSettingsError(_one_line(exc, cls)) from None
