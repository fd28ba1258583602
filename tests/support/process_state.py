"""The process-wide state of the app under test, reset around every test (an autouse fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.env import BASE_ENV


@pytest.fixture(autouse=True)
async def fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Each test reads settings anew and builds its own engine on its own event loop."""
    from app.config.settings import get_settings
    from app.core.orchestrator_factory import OrchestratorFactory
    from app.core.redis_client import close_redis
    from app.db.engine import dispose_engine

    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield
    await OrchestratorFactory.close()
    await dispose_engine()
    await close_redis()
    get_settings.cache_clear()
