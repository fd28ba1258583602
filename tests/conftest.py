"""Real PostgreSQL and Redis for the tests that need them; the rest runs without either.

Every test starts from the session's environment (tests/support/env.py: its own database name and
Redis key prefix, small pools). The database is created and migrated only when a test first asks for
it (tests/support/database.py) and dropped at the end of the session. Test modules import what they
share from tests.support, never from this file.
"""

from __future__ import annotations

import os

from tests.support.env import BASE_ENV

os.environ.update(BASE_ENV)
# A developer's metrics directory or env file would leak into every test's settings.
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
os.environ.pop("ENV_FILE", None)

pytest_plugins = [
    "tests.support.process_state",
    "tests.support.database",
    "tests.support.process_env",
    "tests.support.api_client",
    "tests.support.fault_proxy",
]
