"""No password, key or DSN in reprs, logs or /health."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import structlog

from app.config import connections
from app.config.settings import get_settings
from app.core.logging import configure_logging
from app.db.engine import get_engine
from tests.support.env import BASE_ENV

PASSWORD = "pw-Zq81-never-shown"
API_KEY = "sk-test-4f7e-never-shown"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Trust auth ignores the password, so the real database still answers with it in the URL (the
    # session's, when a test asks for it: only the /health test does).
    url = BASE_ENV["DATABASE_URL"]
    monkeypatch.setenv("DATABASE_URL", url.replace("postgres@", f"postgres:{PASSWORD}@"))
    monkeypatch.setenv("LLM_API_KEY", API_KEY)
    monkeypatch.setenv("JWT_SECRET_KEY", "jwt-secret-never-shown-0123456789abcdef")
    get_settings.cache_clear()


def test_settings_repr_hides_secrets(secret_env: None) -> None:
    settings = get_settings()
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert PASSWORD not in text
        assert API_KEY not in text
    assert PASSWORD not in connections.database_url_masked(settings)
    assert PASSWORD in connections.database_url(settings)  # only the explicit accessor has it


async def test_health_and_engine_repr_hide_secrets(secret_env: None, client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert PASSWORD not in response.text and "postgres:" not in response.text
    assert PASSWORD not in repr(get_engine()) and PASSWORD not in str(get_engine().url)


def test_log_lines_are_redacted_json(secret_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    settings = get_settings().model_copy(update={"LOG_FORMAT": "json"})
    configure_logging(settings, force=True)
    try:
        log = structlog.get_logger("test")
        log.error(
            "connect_failed", dsn=connections.database_url(settings), error=ValueError(f"bad key {API_KEY}")
        )
        logging.getLogger("thirdparty").warning("driver said %s", connections.database_url(settings))
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    finally:
        configure_logging(get_settings().model_copy(update={"LOG_FORMAT": "console"}), force=True)
    assert len(lines) == 2
    text = json.dumps(lines)
    assert PASSWORD not in text and API_KEY not in text
    assert "***" in lines[0]["dsn"] and "***" in lines[1]["event"]
    assert lines[0]["event"] == "connect_failed" and lines[0]["level"] == "error"
    assert "timestamp" in lines[0] and lines[0]["environment"] == "test"
