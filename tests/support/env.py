"""The test session's environment: where the servers are, and the settings every test starts from.

One throw-away database name and Redis key prefix per session, so that test runs never see each other's
rows or messages and never touch a development database. Pools are kept small (2 + 1) so that the whole
suite stays far below the local server's 100 connections. Nothing here connects to anything.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
BACKEND = ROOT / "backend"
# A server on which the tests may create databases, and a Redis.
ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_DB = f"test_{uuid.uuid4().hex[:12]}"

# The environment every test starts from; individual tests override with monkeypatch.
BASE_ENV = {
    "ENVIRONMENT": "test",
    "SERVICE_TYPE": "api",
    "LOG_FORMAT": "console",
    "DATABASE_URL": urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{TEST_DB}")),
    "REDIS_URL": REDIS_URL,
    "DB_POOL_SIZE": "2",
    "DB_MAX_OVERFLOW": "1",
    "DB_POOL_TIMEOUT": "1",
    "DB_POOL_USAGE_LOG_INTERVAL": "0",
    "DB_CONNECTION_BUDGET": "120",
    "DB_ADMIN_RESERVE": "10",
    # Celery's keys and ours live under this prefix: a test run never takes another run's messages.
    "REDIS_KEY_PREFIX": f"{TEST_DB}:",
    "TASK_LOG_FLUSH_INTERVAL": "0.2",
    "JWT_SECRET_KEY": "test-only-secret-0123456789abcdef0123456789",
    "LLM_PROVIDER": "offline",
    "SEARCH_PROVIDER": "offline",
    "LANGGRAPH_POOL_MIN_SIZE": "1",
    "LANGGRAPH_POOL_MAX_SIZE": "3",
    # The guard has its own tests; here it would only warn about the small test topology.
    "DB_BUDGET_ENFORCEMENT": "off",
    # Admission control has its own tests (test_admission); with the test pool of 3 it would shed the
    # bursts that tests of other mechanisms fire on purpose.
    "API_ADMISSION": "off",
    # Tests create many roadmaps as one user and run no workflow: the quota has its own tests.
    "ROADMAP_CREATE_RATE_LIMIT": "100000/minute",
    "ROADMAP_MAX_IN_PROGRESS": "10000",
}
