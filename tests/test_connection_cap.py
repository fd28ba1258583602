"""The allocation as a cap the server enforces (``python -m app.budget --apply-cap``, the prestart step).

The guide's instance on a private server: ``max_connections = 400``, development (``roadmap_dev``, 120 /
10) and production (``roadmap_prod``, 280 / 20), both databases owned by one ordinary role. With the caps
in force (110 and 260), a development whose pools are tripled gets 53300 beyond 110 — 503
``allocation_exhausted`` from its API, a retry in its workers — while production still opens its whole
260 and keeps serving. Without the caps development's burst would leave production fewer than 260.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.budget.model import budget_from_settings
from app.config import connections
from app.config.settings import Settings
from app.db.connection_cap import expected_cap
from app.db.engine import build_engine, engine_options
from app.db.errors import is_allocation_exhausted
from devkit.api import running_api
from devkit.ports import free_port
from devkit.postgres import OwnPostgres, execute
from tests.support.auth import auth
from tests.support.env import BACKEND, BASE_ENV
from tests.support.workers import start_worker, wait_ready

pytestmark = pytest.mark.slow

ROLE = "roadmap"  # an ordinary role (no SUPERUSER, no CREATEROLE) owning both databases
DATABASES = {"production": "roadmap_prod", "development": "roadmap_dev"}
CAPS = {"production": 260, "development": 110}
# The test session's small pools and allocation would hide the profiles' real figures.
_PROFILE_VARS = ("DB_CONNECTION_BUDGET", "DB_ADMIN_RESERVE", "DB_POOL_SIZE", "DB_MAX_OVERFLOW",
                 "LANGGRAPH_POOL_MIN_SIZE", "LANGGRAPH_POOL_MAX_SIZE")  # fmt: skip


class Instance:
    def __init__(self, pg: OwnPostgres) -> None:
        self.pg = pg

    def url(self, database: str, role: str = ROLE) -> str:
        return f"postgresql://{role}@127.0.0.1:{self.pg.port}/{database}"

    def env(self, environment: str, role: str = ROLE, **extra: str) -> dict[str, str]:
        """A subprocess's environment as ``environment``: its profile, its database, as ``role``."""
        base = {k: v for k, v in {**os.environ, **BASE_ENV}.items() if k not in _PROFILE_VARS}
        base.pop("PYTEST_CURRENT_TEST", None)
        return {**base, "PYTHONUNBUFFERED": "1", "ENVIRONMENT": environment, "BACKGROUND_JOBS": "0",
                "DATABASE_URL": self.url(DATABASES[environment], role), **extra}  # fmt: skip

    def settings(self, environment: str, **extra: str) -> Settings:
        return Settings.from_mapping(self.env(environment, **extra))

    def limit(self, database: str) -> int:
        return int(self.scalar("SELECT datconnlimit FROM pg_database WHERE datname = %s", database))

    def connections(self, database: str) -> int:
        return int(self.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", database))

    def scalar(self, query: str, *args: object) -> Any:
        # The superuser, on database postgres: counted against neither cap. Synchronous, so that the
        # async test can call it too.
        with psycopg.connect(self.pg.admin_url, autocommit=True) as conn:
            return conn.execute(query, args).fetchone()[0]  # type: ignore[index]


def run_cli(env: dict[str, str], *args: str, module: str = "app.budget") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=BACKEND, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    pg = OwnPostgres(max_connections=400).start()
    try:
        execute(pg.admin_url, f"CREATE ROLE {ROLE} LOGIN",
                *(f"CREATE DATABASE {db} OWNER {ROLE}" for db in DATABASES.values()))  # fmt: skip
        shared = Instance(pg)
        for environment in DATABASES:
            migrated = run_cli(shared.env(environment), "--wait", "10", module="app.db.prestart")
            assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        yield shared
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def capped(instance: Instance) -> Instance:
    for environment in DATABASES:
        applied = run_cli(instance.env(environment, DB_CONNECTION_CAP="database"), "--apply-cap")
        assert applied.returncode == 0, applied.stderr
        assert instance.limit(DATABASES[environment]) == CAPS[environment]
    return instance


def test_the_cap_is_the_allocation_less_the_admin_reserve_as_pgbouncer_gets_it() -> None:
    for environment, cap in CAPS.items():
        settings = Settings.from_mapping({"ENVIRONMENT": environment})
        assert expected_cap(settings) == cap == budget_from_settings(settings).pgbouncer_max_db_connections


def test_the_command_prints_applies_and_is_idempotent(instance: Instance) -> None:
    execute(instance.pg.admin_url, "ALTER DATABASE roadmap_prod CONNECTION LIMIT -1")
    production = instance.env("production", DB_CONNECTION_CAP="database")

    dry = run_cli(production, "--apply-cap", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert 'ALTER DATABASE "roadmap_prod" CONNECTION LIMIT 260;  -- was none' in dry.stdout
    assert "allocation 280 - admin reserve 20 = cap 260" in dry.stdout and "dry run" in dry.stdout
    assert instance.limit("roadmap_prod") == -1  # nothing altered

    applied = run_cli(production, "--apply-cap")
    assert applied.returncode == 0, applied.stderr
    assert 'ALTER DATABASE "roadmap_prod" CONNECTION LIMIT 260;' in applied.stdout
    assert applied.stderr == ""  # an ordinary role: no superuser warning
    assert instance.limit("roadmap_prod") == 260

    again = run_cli(production, "--apply-cap")
    assert again.returncode == 0 and "ALTER" not in again.stdout
    assert "database roadmap_prod: CONNECTION LIMIT 260 already in force" in again.stdout

    off = run_cli(instance.env("production"), "--apply-cap")
    assert off.returncode == 1 and "DB_CONNECTION_CAP is off" in off.stderr

    pgbouncer = run_cli({**production, "DB_BEHIND_PGBOUNCER": "true"}, "--apply-cap")
    assert pgbouncer.returncode == 0, pgbouncer.stderr
    assert (
        "PgBouncer's max_db_connections = 260" in pgbouncer.stdout and "nothing altered" in pgbouncer.stdout
    )

    invalid = run_cli({**production, "DB_CONNECTION_CAP": "everything"}, "--apply-cap")
    assert invalid.returncode == 1 and len(invalid.stderr.strip().splitlines()) == 1
    assert "DB_CONNECTION_CAP='everything'" in invalid.stderr


async def _open(engine: AsyncEngine, count: int) -> tuple[list[AsyncConnection], list[BaseException]]:
    """``count`` checkouts at once, held: what a process's pool does under load."""
    results = await asyncio.gather(*(engine.connect().start() for _ in range(count)), return_exceptions=True)
    held = [r for r in results if isinstance(r, AsyncConnection)]
    return held, [r for r in results if isinstance(r, BaseException)]


async def _one_by_one(engine: AsyncEngine, count: int) -> tuple[list[AsyncConnection], BaseException | None]:
    """Up to ``count`` checkouts, one after the other, until the first one refused."""
    held: list[AsyncConnection] = []
    for _ in range(count):
        try:
            held.append(await engine.connect().start())
        except Exception as error:  # noqa: BLE001 - returned for the test to judge
            return held, error
    return held, None


def _refused(environment: str, service: str) -> float:
    labels = {"environment": environment, "service": service}
    return REGISTRY.get_sample_value("db_allocation_exhausted_total", labels) or 0.0


@asynccontextmanager
async def _engines(settings: Settings, services: list[str]) -> AsyncIterator[list[AsyncEngine]]:
    engines = [build_engine(engine_options(settings, service)) for service in services]
    try:
        yield engines
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))


async def test_tripled_development_pools_cannot_take_production_connections(
    capped: Instance, tmp_path: Path
) -> None:
    from app.core.celery_app import create_celery
    from app.core.orchestrator_factory import refusal_counting_connection
    from app.messaging.names import PROBE

    # Development's pools tripled (4 + 3 -> 12 + 9 per process), over nine processes: 189 connections
    # at once, more than the 137 that production's 260 would leave it on this server without the cap.
    tripled = {"DB_POOL_SIZE": "12", "DB_MAX_OVERFLOW": "9", "API_DB_POOL_SIZE": "21"}
    services = ["api", "api", "api", "celery_logs", "celery_logs", "celery_content", "celery_content",
                "celery_workflow", "celery_workflow"]  # fmt: skip
    quiet = {"DB_POOL_USAGE_LOG_INTERVAL": "60"}  # one usage line per pool, not one per checkout
    development = capped.settings("development", **tripled, **quiet)
    # One pool each that no pool limit stops first: only the server's cap may refuse them.
    unbounded = {"API_DB_POOL_SIZE": "200", **quiet}
    dev_top_up, production = (
        capped.settings("development", **unbounded),
        capped.settings("production", **unbounded),
    )
    # Its own broker keys: messages other tests left in the shared queues (a roadmap's content task)
    # would otherwise reach the worker below before its probe.
    dev_env = capped.env("development", **tripled, REDIS_KEY_PREFIX=f"cap-{uuid.uuid4().hex[:8]}:")

    with running_api(capped.env("production", DB_CONNECTION_CAP="database"), free_port()) as prod_base:
        async with (
            _engines(development, services) as dev_engines,
            _engines(dev_top_up, ["api"]) as (dev_more,),
            _engines(production, ["api", "api"]) as prod,  # a pool holds at most 200
        ):
            refused_before = sum(_refused("development", s) for s in set(services))
            burst = await asyncio.gather(*(_open(e, 21) for e in dev_engines))
            dev_held = [c for held, _ in burst for c in held]
            dev_errors = [e for _, errors in burst for e in errors]
            assert dev_errors, "a tripled development opened every connection it asked for"
            assert all(is_allocation_exhausted(e) for e in dev_errors), {type(e).__name__ for e in dev_errors}
            assert len(dev_held) <= CAPS["development"]
            # Every refusal counted once, under the service that attempted it.
            assert sum(_refused("development", s) for s in set(services)) - refused_before == len(dev_errors)
            # Simultaneous arrivals at the last slots may all be refused (the server errs that way);
            # one at a time, development reaches exactly its cap and no further.
            more, refusal = await _one_by_one(dev_more, CAPS["development"])
            dev_held += more
            assert refusal is not None and is_allocation_exhausted(refusal)
            assert 'too many connections for database "roadmap_dev"' in str(refusal)
            assert capped.connections("roadmap_dev") == CAPS["development"]

            # The checkpointer's psycopg connections are refused, and counted, the same way.
            checkpointer_before = _refused("development", "celery_workflow.langgraph")
            connection = refusal_counting_connection(development, "celery_workflow")
            with pytest.raises(psycopg.OperationalError) as caught:
                await connection.connect(connections.database_conninfo(development))
            assert is_allocation_exhausted(caught.value)
            assert _refused("development", "celery_workflow.langgraph") == checkpointer_before + 1

            # Production, meanwhile, opens its whole steady allocation, and not one more.
            missing = CAPS["production"] - capped.connections("roadmap_prod")
            prod_held, prod_refusal = await _one_by_one(prod[0], 200)
            assert prod_refusal is None, prod_refusal
            rest, prod_refusal = await _one_by_one(prod[1], missing - 200)
            assert prod_refusal is None, prod_refusal
            prod_held += rest
            assert capped.connections("roadmap_prod") == CAPS["production"]
            beyond, refusal = await _one_by_one(prod[1], 1)
            assert beyond == [] and refusal is not None and 'database "roadmap_prod"' in str(refusal)

            # ... and keeps serving: a real request on its API, which audits the cap in force too.
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.get(f"{prod_base}/api/v1/admin/connections", headers=auth("admin"))
            assert answer.status_code == 200, answer.text
            cap = answer.json()["connection_cap"]
            assert (cap["database_limit"], cap["expected"], cap["matches"]) == (260, 260, True)
            assert answer.json()["charged"] == CAPS["production"]

            # Development's API, tripled too, answers 503 allocation_exhausted with Retry-After.
            with running_api(dev_env, free_port()) as dev_base:
                async with httpx.AsyncClient(timeout=10) as http:
                    refused = await http.get(f"{dev_base}/api/v1/roadmaps", headers=auth())
            assert refused.status_code == 503, refused.text
            assert refused.json()["reason"] == "allocation_exhausted"
            assert refused.headers["Retry-After"] == "2"  # RETRY_AFTER_SECONDS

            # Development's worker retries a task the cap refused, and finishes it once slots free up.
            worker = start_worker("content_generation", 1, dev_env, tmp_path)
            try:
                wait_ready([worker])
                # Sent with the worker's own settings (its broker and key prefix): this process's Celery
                # app keeps the configuration of whichever test used it first.
                sender = create_celery(Settings.from_mapping(dev_env), set_as_current=False)
                task = sender.send_task(PROBE, queue="content_generation")
                deadline = time.monotonic() + 30
                while "reason=allocation_exhausted" not in worker.log() and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert "task_database_unavailable_retrying" in worker.log(), worker.log()[-3000:]
                assert "reason=allocation_exhausted" in worker.log(), worker.log()[-3000:]
                for conn in dev_held[:5]:  # closed for good, not returned to their pool
                    await conn.invalidate()
                assert task.get(timeout=60)["application_name"] == "development.celery_content"
            finally:
                worker.stop()
            for conn in [*dev_held[5:], *prod_held]:
                await conn.close()


def test_the_command_warns_that_a_superuser_is_exempt(instance: Instance) -> None:
    execute(instance.pg.admin_url, "CREATE DATABASE superuser_owned")
    env = instance.env("production", role="postgres", DB_CONNECTION_CAP="database",
                       DATABASE_URL=instance.url("superuser_owned", "postgres"))  # fmt: skip
    applied = run_cli(env, "--apply-cap")
    assert applied.returncode == 0, applied.stderr
    assert applied.stderr.strip().splitlines() == [
        "warning: role postgres is a superuser, and PostgreSQL exempts superusers from both CONNECTION "
        "LIMITs: the cap does not bind this role's connections; run the services as an ordinary role"
    ]
    assert instance.limit("superuser_owned") == 260


def test_a_role_without_the_privilege_gets_the_sql_to_hand_an_administrator(capped: Instance) -> None:
    execute(capped.pg.admin_url, "CREATE ROLE stranger LOGIN")
    stranger = capped.env(
        "production", role="stranger", DB_CONNECTION_CAP="database", DB_CONNECTION_BUDGET="250"
    )
    refused = run_cli(stranger, "--apply-cap")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("role stranger may not set")
    assert refused.stderr.rstrip().endswith(
        'an administrator should run: ALTER DATABASE "roadmap_prod" CONNECTION LIMIT 230;'
    )
    assert capped.limit("roadmap_prod") == 260

    # The owner may cap its database but not its own role (CREATEROLE): the line names what is left.
    owner = capped.env("production", DB_CONNECTION_CAP="database_and_role")
    refused = run_cli(owner, "--apply-cap")
    assert refused.returncode == 1
    assert refused.stderr.rstrip().endswith(
        'an administrator should run: ALTER ROLE "roadmap" CONNECTION LIMIT 260;'
    )

    # Once an administrator has run it, the deploy's own run finds nothing to change.
    execute(capped.pg.admin_url, "CREATE ROLE dev_only LOGIN", "CREATE DATABASE own_dev OWNER dev_only",
            "ALTER ROLE dev_only CONNECTION LIMIT 110")  # fmt: skip
    env = capped.env("development", role="dev_only", DB_CONNECTION_CAP="database_and_role",
                     DATABASE_URL=capped.url("own_dev", "dev_only"))  # fmt: skip
    applied = run_cli(env, "--apply-cap")
    assert applied.returncode == 0, applied.stderr
    assert 'ALTER DATABASE "own_dev" CONNECTION LIMIT 110;' in applied.stdout
    assert "role dev_only: CONNECTION LIMIT 110 already in force" in applied.stdout


def test_the_audit_reports_the_cap_and_whether_it_matches(capped: Instance) -> None:
    audit = run_cli(capped.env("production", DB_CONNECTION_CAP="database"), "--audit", "--json")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    cap = json.loads(audit.stdout)["connection_cap"]
    assert cap == {"scope": "database", "expected": 260, "database_limit": 260, "role": ROLE,
                   "role_limit": -1, "role_superuser": False, "matches": True}  # fmt: skip

    # An allocation raised without applying it: the cap in force no longer matches, and the audit fails.
    raised = run_cli(
        capped.env("production", DB_CONNECTION_CAP="database", DB_CONNECTION_BUDGET="300"), "--audit"
    )
    assert raised.returncode == 1
    assert "database roadmap_prod 260, role roadmap -1 (-1: none); expected 280" in raised.stdout
    assert "DOES NOT MATCH" in raised.stdout


def test_prestart_applies_the_cap_when_asked_once_per_change(capped: Instance) -> None:
    def prestart(**extra: str) -> str:
        done = run_cli(capped.env("development", **extra), "--wait", "10", module="app.db.prestart")
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    quiet = prestart()  # DB_CONNECTION_CAP defaults to off: nothing read, nothing altered
    assert "db_connection_cap" not in quiet and capped.limit("roadmap_dev") == 110

    lowered = prestart(DB_CONNECTION_CAP="database", DB_CONNECTION_BUDGET="100")
    assert lowered.count("db_connection_cap") == 1 and "database 110 -> 90" in lowered
    assert capped.limit("roadmap_dev") == 90
    again = prestart(DB_CONNECTION_CAP="database", DB_CONNECTION_BUDGET="100")
    assert again.count("db_connection_cap") == 1 and "changed=[]" in again
    restored = prestart(DB_CONNECTION_CAP="database")
    assert "database 90 -> 110" in restored and capped.limit("roadmap_dev") == 110
