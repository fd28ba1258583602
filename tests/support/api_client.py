"""The app in this process, called through httpx without a server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest


@pytest.fixture
async def client(migrated_database: str) -> AsyncIterator[object]:
    """Every route but a few reads or writes the database: the client brings the migrated one."""
    import httpx

    from app.main import app

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
