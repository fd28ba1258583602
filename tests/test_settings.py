"""Settings: production defaults, development from its env file, one-line errors naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from app import sizing, topology
from app.config import connections
from app.config.loading import InvalidSettingsError
from app.config.settings import Settings
from tests.support.env import ROOT

SPEC_PRODUCTION = {
    "ENVIRONMENT": "production",
    "DB_POOL_SIZE": 6,
    "DB_MAX_OVERFLOW": 4,
    "UVICORN_WORKERS": 8,
    "CELERY_LOGS_CONCURRENCY": 8,
    "CELERY_CONTENT_CONCURRENCY": 10,
    "CELERY_WORKFLOW_CONCURRENCY": 6,
    "LANGGRAPH_POOL_MIN_SIZE": 2,
    "LANGGRAPH_POOL_MAX_SIZE": 20,
    "DB_CONNECTION_BUDGET": 280,
    "DB_ADMIN_RESERVE": 20,
    "POSTGRES_DB": "roadmap_prod",
    "DB_POOL_TIMEOUT": 5.0,
}
SPEC_DEVELOPMENT = {
    "ENVIRONMENT": "development",
    "DEBUG": True,
    "DB_POOL_SIZE": 4,
    "DB_MAX_OVERFLOW": 3,
    "UVICORN_WORKERS": 4,
    "CELERY_LOGS_CONCURRENCY": 4,
    "CELERY_CONTENT_CONCURRENCY": 6,
    "CELERY_WORKFLOW_CONCURRENCY": 4,
    "LANGGRAPH_POOL_MIN_SIZE": 2,
    "LANGGRAPH_POOL_MAX_SIZE": 10,
    "DB_CONNECTION_BUDGET": 120,
    "DB_ADMIN_RESERVE": 10,
    "POSTGRES_DB": "roadmap_dev",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_are_the_production_values(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings.load()
    for name, expected in SPEC_PRODUCTION.items():
        assert getattr(settings, name) == expected, name
    assert sizing.pool_sizing(settings).max_connections == 10
    assert all(getattr(settings, s.replicas_var) == 1 for s in topology.SERVICES)


def test_development_values_come_from_the_example_env_file(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ENV_FILE", str(ROOT / ".env.development.example"))
    settings = Settings.load()
    for name, expected in SPEC_DEVELOPMENT.items():
        assert getattr(settings, name) == expected, name
    assert sizing.pool_sizing(settings).max_connections == 7
    assert settings.CORS_ORIGINS == ["http://localhost:3000", "http://localhost:5173"]


def test_an_env_file_that_does_not_exist_is_refused(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ENV_FILE", str(tmp_path / ".env.developement"))
    with pytest.raises(InvalidSettingsError, match=r"^ENV_FILE='.*\.env\.developement': no such file"):
        Settings.load()


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, ["--sub", "me", "--role", "admin"], "JWT_SECRET_KEY is not set: export it"),
        ({"ENV_FILE": "missing.env"}, ["--sub", "me"], "ENV_FILE='missing.env': no such file"),
        (
            {"JWT_SECRET_KEY": "x" * 40},
            ["--sub", "  "],
            "--sub '  ': 1 to 200 printable characters, not blank",
        ),
    ],
)
def test_token_minting_explains_itself_in_one_line(
    standalone_env: dict[str, str], env: dict[str, str], args: list[str], message: str
) -> None:
    base = {k: v for k, v in standalone_env.items() if k not in ("JWT_SECRET_KEY", "ENV_FILE")}
    result = subprocess.run(
        [sys.executable, "-m", "app.core.security", *args], cwd=ROOT / "backend", env={**base, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and result.stdout == ""
    assert message in result.stderr and "Traceback" not in result.stderr
    minted = subprocess.run(
        [sys.executable, "-m", "app.core.security", "--sub", "me", "--role", "admin"], cwd=ROOT,
        env={**base, "ENV_FILE": ".env.development.example"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert minted.returncode == 0 and minted.stdout.count(".") == 2  # header.claims.signature


def test_environment_alone_selects_the_development_profile(clean_env: pytest.MonkeyPatch) -> None:
    """What the guide's Railway section sets: ENVIRONMENT=development and nothing else."""
    clean_env.setenv("ENVIRONMENT", "development")
    settings = Settings.load()
    for name, expected in SPEC_DEVELOPMENT.items():
        if name != "DEBUG":  # opt-in in the env file: a traceback page is no default for a reachable host
            assert getattr(settings, name) == expected, name
    assert settings.DEBUG is False
    assert {
        s.name: sizing.pool_sizing(settings, s.name).max_connections for s in topology.SERVICES
    } == dict.fromkeys(topology.NAMES, 7)


def test_an_explicit_variable_wins_over_its_profile(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ENVIRONMENT", "development")
    clean_env.setenv("CELERY_CONTENT_CONCURRENCY", "3")
    clean_env.setenv("DB_CONNECTION_BUDGET", "150")
    clean_env.setenv("CELERY_CONTENT_DB_POOL_SIZE", "2")
    settings = Settings.load()
    assert settings.CELERY_CONTENT_CONCURRENCY == 3 and settings.DB_CONNECTION_BUDGET == 150
    assert settings.UVICORN_WORKERS == 4  # still the profile's
    assert (
        sizing.pool_sizing(settings, "celery_content").pool_size,
        sizing.pool_sizing(settings, "celery_content").max_overflow,
    ) == (2, 3)
    assert sizing.pool_sizing(settings, "celery_logs").pool_size == 4  # the shared fallback
    # the API's pool is fixed-size: the shared maximum, all persistent (no overflow churn)
    assert (
        sizing.pool_sizing(settings, "api").pool_size,
        sizing.pool_sizing(settings, "api").max_overflow,
    ) == (7, 0)


def test_every_service_has_its_variables(clean_env: pytest.MonkeyPatch) -> None:
    """The topology generates each service's settings: adding a service adds its variables."""
    fields = Settings.model_fields
    for spec in topology.SERVICES:
        for name in (spec.processes_var, spec.replicas_var, spec.pool_size_var, spec.max_overflow_var):
            assert name in fields, name
        assert (spec.time_limit_var in fields) == spec.is_worker
    clean_env.setenv("CELERY_LOGS_REPLICAS", "0")
    with pytest.raises(InvalidSettingsError, match="CELERY_LOGS_REPLICAS='0'"):
        Settings.load()


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("DB_POOL_SIZE", "-1", "greater than or equal to 1"),
        ("DB_MAX_OVERFLOW", "-3", "greater than or equal to 0"),
        ("ENVIRONMENT", "staging", "'development', 'production' or 'test'"),
        ("DB_POOL_TIMEOUT", "five", "valid number"),
        ("UVICORN_WORKERS", "eight", "valid integer"),
        ("DB_POOL_PRE_PING", "perhaps", "valid boolean"),
        ("REDIS_URL", "http://x", "redis://"),
        ("REDIS_URL", "rediss://h:6380/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be required"),
        ("SERVICE_TYPE", "worker", "'api', 'celery_logs', 'celery_content' or 'celery_workflow'"),
    ],
)
def test_invalid_value_is_one_line_naming_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(InvalidSettingsError) as caught:
        Settings.load()
    message = str(caught.value)
    assert "\n" not in message
    assert name in message
    assert fragment in message


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (("LANGGRAPH_POOL_MIN_SIZE", "12"), ("LANGGRAPH_POOL_MAX_SIZE", "10")),
        # tokens cannot be minted longer than they may live
        (("JWT_EXPIRE_MINUTES", "120"), ("JWT_MAX_LIFETIME_MINUTES", "60")),
    ],
)
def test_cross_field_rule_names_both_variables(
    clean_env: pytest.MonkeyPatch, low: tuple[str, str], high: tuple[str, str]
) -> None:
    for name, value in (low, high):
        clean_env.setenv(name, value)
    with pytest.raises(InvalidSettingsError) as caught:
        Settings.load()
    assert f"{low[0]} ({low[1]}) must be <= {high[0]} ({high[1]})" in str(caught.value)


def test_an_edge_without_its_agent_port_is_refused_at_start(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("API_ADMISSION", "edge")
    with pytest.raises(InvalidSettingsError, match="API_EDGE_AGENT_PORT must be set") as caught:
        Settings.load()
    assert "\n" not in str(caught.value)
    clean_env.setenv("API_EDGE_AGENT_PORT", "8001")
    assert Settings.load().API_ADMISSION == "edge"


def test_invalid_secret_is_named_but_not_echoed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", "mysql://admin:hunter2-secret@db/x")
    with pytest.raises(InvalidSettingsError) as caught:
        Settings.load()
    assert "DATABASE_URL" in str(caught.value)
    assert "hunter2-secret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://admin:hunter2-secret@db:notaport/app",
        "postgresql://admin:hunter2-secret@db:99999/app",
        "postgres://admin:hunter2-secret@db1:5432,db2:5432/app",
    ],
)
def test_a_database_url_with_a_bad_port_is_one_line_without_its_password(
    clean_env: pytest.MonkeyPatch, url: str
) -> None:
    clean_env.setenv("DATABASE_URL", url)
    with pytest.raises(InvalidSettingsError) as caught:
        Settings.load()
    message = str(caught.value)
    assert message.startswith("invalid configuration: DATABASE_URL: ") and "port" in message
    assert "hunter2-secret" not in message and "\n" not in message
    clean_env.setenv("DATABASE_URL", "postgresql://admin:hunter2-secret@db/app")  # default port: fine
    assert connections.database_url(Settings.load()).endswith("@db/app")


def test_dsn_from_parts_or_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("POSTGRES_HOST", "db.internal")
    clean_env.setenv("POSTGRES_PASSWORD", "p@ss:word/1")
    settings = Settings.load()
    assert connections.database_url(settings).startswith(
        "postgresql+asyncpg://postgres:p%40ss%3Aword%2F1@db.internal:5432/"
    )
    assert "p%40ss" not in connections.database_url_masked(settings)
    assert "***" in connections.database_url_masked(settings)
    clean_env.setenv("DATABASE_URL", "postgres://u:pw-from-url@h:6543/app")
    assert connections.database_url(Settings.load()) == "postgresql+asyncpg://u:pw-from-url@h:6543/app"


@pytest.mark.parametrize(
    ("url", "asyncpg", "libpq"),
    [
        (
            "postgres://u:pw@h:6543/app",
            "postgresql+asyncpg://u:pw@h:6543/app",
            "postgresql://u:pw@h:6543/app",
        ),
        ("postgresql://u@h/app", "postgresql+asyncpg://u@h/app", "postgresql://u@h/app"),
        (
            "postgresql+psycopg://u:pw@h/app?sslmode=require&application_name=x",
            "postgresql+asyncpg://u:pw@h/app?sslmode=require&application_name=x",
            "postgresql://u:pw@h/app?sslmode=require&application_name=x",
        ),
        ("postgresql+asyncpg://u:pw@h/app", "postgresql+asyncpg://u:pw@h/app", "postgresql://u:pw@h/app"),
    ],
)
def test_each_driver_gets_the_url_form_it_reads(
    clean_env: pytest.MonkeyPatch, url: str, asyncpg: str, libpq: str
) -> None:
    """The forms PaaS hand out become the asyncpg URL (SQLAlchemy) and the libpq URL (psycopg): only
    the driver changes, the rest is kept as written."""
    clean_env.setenv("DATABASE_URL", url)
    clean_env.setenv("CHECKPOINTER_DATABASE_URL", url)
    settings = Settings.load()
    assert connections.database_url(settings) == asyncpg
    assert connections.database_conninfo(settings) == libpq
    assert connections.checkpointer_conninfo(settings) == libpq


def test_libpq_reads_encoded_spaces_as_written(clean_env: pytest.MonkeyPatch) -> None:
    """libpq refuses a raw space in a URL and takes "+" literally: re-encoding the URL would break both."""
    clean_env.setenv("POSTGRES_PASSWORD", "correct horse")
    clean_env.setenv("CHECKPOINTER_DATABASE_URL", "postgres://u@h/my%20db?options=-c%20search_path%3Da+b")
    settings = Settings.load()
    assert conninfo_to_dict(connections.database_conninfo(settings))["password"] == "correct horse"
    checkpointer = conninfo_to_dict(connections.checkpointer_conninfo(settings))
    assert (checkpointer["dbname"], checkpointer["options"]) == ("my db", "-c search_path=a+b")


def test_rediss_url_with_cert_requirements_is_accepted(clean_env: pytest.MonkeyPatch) -> None:
    url = "rediss://default:pw@redis.example:6380/0?ssl_cert_reqs=required"
    clean_env.setenv("REDIS_URL", url)
    assert connections.redis_url(Settings.load()) == url


def test_application_name_is_environment_dot_service(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ENVIRONMENT", "development")
    clean_env.setenv("SERVICE_TYPE", "celery_content")
    settings = Settings.load()
    assert connections.application_name(settings) == "development.celery_content"
    assert connections.application_name(settings, "migrate") == "development.migrate"


def test_app_start_up_with_bad_setting_exits_with_one_line(standalone_env: dict[str, str]) -> None:
    env = {**standalone_env, "DB_POOL_SIZE": "-2"}
    result = subprocess.run(
        [sys.executable, "-c", "from app.main import app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["invalid configuration: DB_POOL_SIZE='-2': Input should be greater than or equal to 1"]


def test_an_empty_per_service_pool_means_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CELERY_LOGS_DB_POOL_SIZE", "")
    clean_env.setenv("DB_POOL_SIZE", "3")
    assert sizing.pool_sizing(Settings.load(), "celery_logs").pool_size == 3


@pytest.mark.parametrize(
    ("connections", "ratio", "slots"), [(10, 0.7, 6), (7, 0.7, 4), (25, 0.56, 13), (1, 0.7, 1)]
)
def test_fan_out_stays_below_the_high_usage_mark(
    clean_env: pytest.MonkeyPatch, connections: int, ratio: float, slots: int
) -> None:
    settings = Settings.load(
        CELERY_CONTENT_DB_POOL_SIZE=connections,
        CELERY_CONTENT_DB_MAX_OVERFLOW=0,
        DB_POOL_HIGH_USAGE_RATIO=ratio,
    )
    assert sizing.fan_out_checkouts(settings, "celery_content") == slots


def test_deadlines_are_derived_once_per_service(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings.load()
    assert connections.command_timeout(settings, "api") == settings.DB_STATEMENT_TIMEOUT + 1 == 11.0
    assert connections.session_settings(settings, "api") == {
        "statement_timeout": "10000",
        "idle_in_transaction_session_timeout": "60000",
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
    }
    # Migrations may run for minutes; the advisory-lock session waits idle while Alembic works.
    assert connections.command_timeout(settings, "migrate") is None
    assert "statement_timeout" not in connections.session_settings(settings, "migrate")
    assert "idle_in_transaction_session_timeout" not in connections.session_settings(settings, "migrate")
    assert connections.checkpointer_operation_timeout(settings, "celery_workflow") == 5.0 + 11.0
    # PgBouncer refuses unknown startup parameters: none are sent behind it.
    clean_env.setenv("DB_BEHIND_PGBOUNCER", "true")
    assert connections.session_settings(Settings.load(), "api") == {}


def test_each_service_shutdown_fits_its_own_bounds(clean_env: pytest.MonkeyPatch) -> None:
    """What Railway's drainingSeconds must allow, from the settings that bound each step."""
    settings = Settings.load()
    assert sizing.api_graceful_shutdown_timeout(settings) == 9  # REQUEST_TIMEOUT_SECONDS 8 + 1
    assert sizing.shutdown_seconds(settings, "api") == 2 + 9 + 10
    for worker in ("celery_logs", "celery_content", "celery_workflow"):
        assert sizing.shutdown_seconds(settings, worker) == 15 + 10
    clean_env.setenv("REQUEST_TIMEOUT_SECONDS", "20.5")
    clean_env.setenv("CELERY_SOFT_SHUTDOWN_TIMEOUT", "60")
    settings = Settings.load()
    assert sizing.api_graceful_shutdown_timeout(settings) == 22
    assert (
        sizing.shutdown_seconds(settings, "api"),
        sizing.shutdown_seconds(settings, "celery_workflow"),
    ) == (34, 70)


def test_the_request_deadline_must_outlast_the_pool_timeout(clean_env: pytest.MonkeyPatch) -> None:
    """Otherwise an exhausted pool would answer request_timeout, hiding the real reason."""
    clean_env.setenv("DB_POOL_TIMEOUT", "10")
    with pytest.raises(InvalidSettingsError) as caught:
        Settings.load()
    assert "REQUEST_TIMEOUT_SECONDS (8) must be > DB_POOL_TIMEOUT (10)" in str(caught.value)
    clean_env.setenv("REQUEST_TIMEOUT_SECONDS", "15")
    assert Settings.load().REQUEST_TIMEOUT_SECONDS == 15


def test_every_service_variable_the_topology_names_is_declared_with_its_default() -> None:
    """app.config.services declares each service's variables by name (grep-able, type-checked); the
    topology names them and holds their production defaults: the two never drift apart."""
    from app.config.services import ServiceSettings

    declared = ServiceSettings.model_fields
    named = set()
    for spec in topology.SERVICES:
        names = [spec.processes_var, spec.replicas_var, spec.pool_size_var, spec.max_overflow_var]
        names += [spec.time_limit_var] if spec.time_limit is not None else []
        named |= set(names)
        assert declared[spec.processes_var].default == spec.processes["production"], spec.name
        assert declared[spec.replicas_var].default == spec.replicas, spec.name
        assert (
            declared[spec.pool_size_var].default is None and declared[spec.max_overflow_var].default is None
        )
        if spec.time_limit is not None:
            assert declared[spec.time_limit_var].default == spec.time_limit, spec.name
    assert set(declared) == named  # nothing declared that no service names
    assert named <= set(Settings.model_fields)
