"""The environment of the subprocesses a test starts (the app's CLIs, uvicorn, Celery workers)."""

from __future__ import annotations

import os

import pytest

from tests.support.env import BASE_ENV


@pytest.fixture
def standalone_env() -> dict[str, str]:
    """For a subprocess that needs no shared server: a CLI that only reads settings, a harness that
    starts its own. No session database is created for it; its DATABASE_URL still names the session's,
    which may not exist, so a subprocess that connects after all fails rather than reach another one."""
    env = {**os.environ, **BASE_ENV, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


@pytest.fixture
def subprocess_env(migrated_database: str, standalone_env: dict[str, str]) -> dict[str, str]:
    """For a subprocess that works on the session's database: migrated before the subprocess starts."""
    return standalone_env
