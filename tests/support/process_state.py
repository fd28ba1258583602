"""The process-wide state of the app under test, reset around every test (an autouse fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.env import BASE_ENV


@pytest.fixture(autouse=True)
async def fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Each test reads settings anew and starts from a fresh runtime (``app.runtime``): its own engine,
    Redis clients and checkpointer pool, built on its own event loop and closed after it."""
    from app import runtime
    from app.config.settings import get_settings

    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    runtime.reset()
    yield
    await runtime.current().aclose()
    get_settings.cache_clear()
