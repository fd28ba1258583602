"""railway_entrypoint.sh (DRY_RUN), the image, and the Celery configuration it starts.

The compose file has its own tests: tests/test_compose.py.
"""

from __future__ import annotations

import importlib
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from app import sizing, topology
from app.config.loading import InvalidSettingsError
from app.config.settings import Settings, get_settings
from app.core.celery_app import TASK_MODULES, create_celery, queue_options
from app.worker.lifecycle import service_for_queues
from devkit import railway_config
from tests.support.env import ROOT

ENTRYPOINT = ROOT / "backend" / "scripts" / "railway_entrypoint.sh"
CELERY = "env REMAP_SIGTERM=SIGQUIT celery -A app.core.celery_app worker --loglevel=INFO"
API = "python -m app.api.server app.main:app --host 0.0.0.0 --port 8000"
HTTP = "--http app.api.http_protocol:BoundedHttpToolsProtocol --timeout-keep-alive 5"
EXPECTED = {
    "production": {
        "api": f"{API} --workers 8 {HTTP} --timeout-graceful-shutdown 9",
        "celery_logs": f"{CELERY} --queues=logs --hostname=logs@%h",
        "celery_content": f"{CELERY} --queues=content_generation --hostname=content@%h",
        "celery_workflow": f"{CELERY} --queues=roadmap_workflow --hostname=workflow@%h",
    },
    "development": {
        "api": f"{API} --workers 4 {HTTP} --timeout-graceful-shutdown 9",
        "celery_logs": f"{CELERY} --queues=logs --hostname=logs@%h",
        "celery_content": f"{CELERY} --queues=content_generation --hostname=content@%h",
        "celery_workflow": f"{CELERY} --queues=roadmap_workflow --hostname=workflow@%h",
    },
}


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def entrypoint(**env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        ["bash", str(ENTRYPOINT)], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("environment", ["production", "development"])
@pytest.mark.parametrize("service", topology.NAMES)
def test_dry_run_prints_the_guide_command(environment: str, service: str) -> None:
    env = env_file(ROOT / ".env.development.example") if environment == "development" else {}
    result = entrypoint(**env, SERVICE_TYPE=service, DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [EXPECTED[environment][service]]


def test_the_command_follows_the_settings_the_budget_reads() -> None:
    """No defaults in the shell: the API's process count is its setting, the service an argument. A
    worker's child count is on no command line: its parent takes it from the plan (test_workers.py)."""
    result = entrypoint(ENVIRONMENT="development", UVICORN_WORKERS="3", DRY_RUN="1")
    assert result.returncode != 0  # neither SERVICE_TYPE nor an argument
    base = {"PATH": os.environ["PATH"], "ENVIRONMENT": "development", "DRY_RUN": "1"}
    commands = {
        service: subprocess.run(
            ["bash", str(ENTRYPOINT), service],
            env={**base, **extra},
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        for service, extra in (
            ("api", {"UVICORN_WORKERS": "3"}),
            ("celery_content", {"CELERY_CONTENT_CONCURRENCY": "3"}),
        )
    }
    assert "--workers 3" in " ".join(commands["api"])
    assert commands["celery_content"] == EXPECTED["development"]["celery_content"].split()


def test_port_is_honoured() -> None:
    result = entrypoint(SERVICE_TYPE="api", DRY_RUN="1", PORT="31337")
    assert "--port 31337" in result.stdout


@pytest.mark.parametrize("dry_run", ["1", "0"])
@pytest.mark.parametrize("value", ["", "worker", "API"])
def test_bad_service_type_fails_naming_valid_values(value: str, dry_run: str) -> None:
    result = entrypoint(SERVICE_TYPE=value, DRY_RUN=dry_run)
    assert result.returncode == 64
    assert result.stdout == ""
    assert "api, celery_logs, celery_content, celery_workflow" in result.stderr
    assert "Traceback" not in result.stderr


def test_dockerfile_runs_as_non_root_through_the_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "\nUSER app\n" in text
    assert 'ENTRYPOINT ["scripts/railway_entrypoint.sh"]' in text


def test_celery_queues_are_explicit_and_routed_by_module() -> None:
    app = create_celery(Settings.load(), set_as_current=False)
    conf = app.conf
    assert conf.task_create_missing_queues is False
    assert {q.name for q in conf.task_queues} == {"logs", "content_generation", "roadmap_workflow"}
    assert conf.include == TASK_MODULES
    assert set(TASK_MODULES) == {*(s.task_module for s in topology.WORKERS), "app.tasks.probe"}
    assert conf.worker_prefetch_multiplier == 1
    assert app.amqp.router.route({}, "app.tasks.content_generation_tasks.anything")["queue"].name == (
        "content_generation"
    )
    # Each task takes its queue's options when the app binds it: a decorator names only the task.
    from app.core.celery_app import celery_app
    from app.messaging.names import FLUSH_TASK_EVENTS, GENERATE_CONTENT, PROBE

    for module in TASK_MODULES:  # what a worker imports at start (include)
        importlib.import_module(module)
    tasks = celery_app.tasks
    assert tasks[GENERATE_CONTENT].time_limit == get_settings().CELERY_CONTENT_TIME_LIMIT
    assert tasks[GENERATE_CONTENT].acks_late and tasks[GENERATE_CONTENT].reject_on_worker_lost
    assert tasks[FLUSH_TASK_EVENTS].acks_late is False and tasks[PROBE].acks_late is True
    assert service_for_queues("roadmap_workflow", Settings.load()) == "celery_workflow"
    # A worker on several queues, or on none without a worker SERVICE_TYPE, is in no service's budget.
    for queues in ("logs,content_generation", None):
        with pytest.raises(InvalidSettingsError, match="a worker serves exactly one queue"):
            service_for_queues(queues, Settings.load())
    assert service_for_queues(None, Settings.load(SERVICE_TYPE="celery_logs")) == "celery_logs"
    long_task = queue_options("content_generation", Settings.load())
    assert long_task["acks_late"] and long_task["reject_on_worker_lost"]
    assert long_task["soft_time_limit"] < long_task["time_limit"] == Settings.load().CELERY_CONTENT_TIME_LIMIT
    # The broker's visibility timeout: the longest late-acknowledged limit, the retry countdown, 10%.
    assert sizing.celery_visibility_timeout(Settings.load()) == 3600 + 30 + 360
    assert app.conf.broker_transport_options["visibility_timeout"] == 3990
    # It follows the limits of the acks_late services only (logs is acknowledged early) ...
    assert sizing.celery_visibility_timeout(Settings.load(CELERY_LOGS_TIME_LIMIT=9000)) == 3990
    raised = Settings.load(CELERY_CONTENT_TIME_LIMIT=5000)
    assert sizing.celery_visibility_timeout(raised) == 5000 + 30 + 500
    # ... and always outlasts every one of them: a running task is never handed to a second worker.
    assert all(
        sizing.celery_visibility_timeout(raised) > p.time_limit + topology.RETRY_COUNTDOWN_MAX
        for p in sizing.fleet(raised)
        if p.service.acks_late and p.time_limit
    )


def test_rediss_url_with_required_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://default:pw@redis.example:6380/0?ssl_cert_reqs=required")
    app = create_celery(Settings.load(), set_as_current=False)
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert app.conf.redis_backend_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_generated_files_are_in_sync(standalone_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_generated.py"), "--check"],
        env=standalone_env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (ROOT / "deploy" / "railway").exists()  # Config as Code, replaced by .railway/railway.py


def railway_env(service: dict, **shared: str) -> dict[str, str]:
    """A service's variables as Railway would resolve them: literals, and the shared references filled."""
    env = {}
    for name, value in service["variables"].items():
        if value["type"] == "literal":
            env[name] = value["value"]
        else:
            assert value == {"type": "sharedReference", "name": name}, name
            env[name] = shared.get(name, "")
    return env


@pytest.mark.parametrize("environment", ["production", "development"])
def test_railway_graph_matches_the_topology_and_fits(environment: str) -> None:
    graph = railway_config.compile_graph(environment)
    services = {r["name"]: r for r in graph["resources"] if r["type"] == "service"}
    assert list(services) == list(topology.NAMES)
    first = None
    for spec in topology.SERVICES:
        node = services[spec.name]
        deploy = node["deploy"]
        assert node["build"] == {"builder": "DOCKERFILE", "dockerfilePath": "Dockerfile"}
        assert deploy["startCommand"] == f"scripts/railway_entrypoint.sh {spec.name}"
        assert deploy["preDeployCommand"] == ["scripts/prestart.sh"]
        assert deploy["restartPolicyType"] == "ON_FAILURE"
        assert ("healthcheckPath" in deploy) == (not spec.is_worker)
        assert deploy["drainingSeconds"] > 0 and deploy["overlapSeconds"] >= 0
        # URLs and secrets are references the user fills in, never values in the file
        for name in (
            "DATABASE_URL",
            "CHECKPOINTER_DATABASE_URL",
            "REDIS_URL",
            "JWT_SECRET_KEY",
            "LLM_API_KEY",
        ):
            assert node["variables"][name] == {"type": "sharedReference", "name": name}
        env = railway_env(
            node, DATABASE_URL="postgresql://app@db.invalid:5432/x", REDIS_URL="redis://r:6379/0"
        )
        assert env["SERVICE_TYPE"] == spec.name and env["ENVIRONMENT"] == environment
        settings = Settings.from_mapping(env)
        assert deploy["numReplicas"] == sizing.plan(settings, spec.name).replicas
        # every service carries the same fleet sizing: each one's start-up guard checks the whole fleet
        fleet_values = {k: v for k, v in env.items() if k != "SERVICE_TYPE"}
        first = first or fleet_values
        assert fleet_values == first
        # the start command, run as Railway runs it (exec form: split, no shell, in the image's WORKDIR)
        command = subprocess.run(
            deploy["startCommand"].split(), cwd=ROOT / "backend",
            env={"PATH": os.environ["PATH"], "DRY_RUN": "1", **env},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert command.stdout.strip() == EXPECTED[environment][spec.name], command.stderr
    # The budget with exactly these values fits the steady state and both deploy windows, and its
    # allocation is the environment's share of the 400-connection instance.
    assert first is not None
    budget = subprocess.run(
        [sys.executable, "-m", "app.budget", "--json"], cwd=ROOT / "backend",
        env={"PATH": os.environ["PATH"], **first}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    body = json.loads(budget.stdout)
    assert budget.returncode == 0 and body["fits"], budget.stdout
    assert body["allocation"] == {"production": 280, "development": 120}[environment]
    assert body["deploy"]["case"] == "all_services"
    assert body["steady"]["worst_case"] <= body["deploy"]["one_service"]["worst_case"]
    assert body["deploy"]["one_service"]["worst_case"] <= body["deploy"]["all_services"]["worst_case"]
    assert body["deploy"]["all_services"]["worst_case"] <= body["allocation"]


def test_railway_file_refuses_an_environment_without_an_allocation() -> None:
    with pytest.raises(ValueError, match="has no connection allocation"):
        railway_config.compile_graph("pr-42")
