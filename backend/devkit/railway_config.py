"""The Railway infrastructure-as-code file, `.railway/railway.py`, rendered from the topology and budget.

Railway's CLI evaluates that file with the `railway-sdk` package alone, not with this project's
dependencies, so the file cannot import `app`: it holds the values as plain data, written here, and
`scripts/update_generated.py --check` fails when they drift from the code.

What it renders, per Railway environment (production: the 280 profile; development: the 120 one):

* the four services of `app.topology`, each with its `SERVICE_TYPE`, its start command through the
  entrypoint, its replicas, an ON_FAILURE restart policy, and the API's `/health` healthcheck;
* the pool variables `--suggest` finds for `DB_BUDGET_DEPLOY_CASE=all_services`, written into every
  service: each service's start-up guard checks the whole fleet, so each must know every pool;
* overlap and draining seconds from each service's shutdown needs (`deploy_timing`);
* references, never values, for the URLs and secrets (Railway shared variables the user sets).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import sizing, topology
from app.budget.__main__ import settings_for
from app.budget.model import suggest
from app.config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RAILWAY_FILE = ROOT / ".railway" / "railway.py"

ENVIRONMENTS = ("production", "development")
# A worker without a healthcheck counts as healthy the moment its container starts, before Celery has
# connected and consumes: the old one keeps consuming this long so the queue is never without one.
# The rehearsal measured 1.4-4.7 s for one worker and up to 21 s for all four starting on 2 cores.
WORKER_START_SECONDS = 20
# A push to the repository redeploys every service built from it: plan for all four at once.
DEPLOY_CASE: topology.DeployCase = "all_services"
# Set once per Railway environment as shared variables, referenced by every service; never written here.
REFERENCED = ("DATABASE_URL", "CHECKPOINTER_DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY", "LLM_API_KEY")


@dataclass(frozen=True)
class Timing:
    overlap: int
    overlap_why: str
    draining: int
    draining_why: str


def deploy_timing(settings: Settings, service: topology.Service) -> Timing:
    """Overlap and draining seconds for ``service``, with the reason for each.

    Both keep the old deployment's pools alive beside the new one's; the budget counts that window
    (``all_services``) whatever its length, so these are chosen for the work, not for the connections.
    """
    drain = math.ceil(sizing.shutdown_seconds(settings, service.name))
    if not service.is_worker:
        return Timing(
            overlap=math.ceil(settings.REQUEST_TIMEOUT_SECONDS),
            overlap_why=(
                "the edge moves new requests to the new deployment once /health passes; the old one keeps "
                "accepting for one request deadline (REQUEST_TIMEOUT_SECONDS), so a request routed just "
                "before the switch is served, not refused"
            ),
            draining=drain,
            draining_why=(
                "after SIGTERM the API refuses new connections at once, serves its open ones for "
                "API_DRAIN_SECONDS, finishes in-flight requests (each bounded by REQUEST_TIMEOUT_SECONDS) "
                "and closes its pools: shutdown_seconds('api')"
            ),
        )
    if service.acks_late:
        hand_back = (
            f"running tasks (up to {service.time_limit_var}={getattr(settings, service.time_limit_var)} s) "
            "get CELERY_SOFT_SHUTDOWN_TIMEOUT to finish, then are handed back unacknowledged, restored to "
            "the queue at once, and rerun by the new deployment from what they wrote (late "
            f"acknowledgement), plus Celery's cold shutdown: shutdown_seconds('{service.name}')"
        )
    else:
        hand_back = (
            "its tasks are short flushes acknowledged early, given CELERY_SOFT_SHUTDOWN_TIMEOUT to "
            "finish; one cut short leaves its events buffered in Redis for the next flush: "
            f"shutdown_seconds('{service.name}')"
        )
    return Timing(
        overlap=WORKER_START_SECONDS,
        overlap_why=(
            "a worker has no healthcheck, so Railway counts it healthy when its container starts, before "
            "Celery consumes; the old one keeps consuming until the new one does (measured up to 21 s "
            "with all four starting at once); the budget counts both sets either way"
        ),
        draining=drain,
        draining_why="after SIGTERM it takes no new task; " + hand_back,
    )


def _fleet_variables(settings: Settings, environment: str) -> dict[str, str]:
    """What every service of ``environment`` is given: the profile, the fitting pools, the guard."""
    found = suggest(settings)
    if not found.fits:  # the file must never ship a topology its own guard would refuse
        raise SystemExit(f"{environment}: the suggested pools do not fit ({found.advice})")
    values: dict[str, str] = {
        "ENVIRONMENT": environment,
        "DB_CONNECTION_BUDGET": str(settings.DB_CONNECTION_BUDGET),
        "DB_ADMIN_RESERVE": str(settings.DB_ADMIN_RESERVE),
        "DB_BUDGET_DEPLOY_CASE": DEPLOY_CASE,
        "DB_BUDGET_ENFORCEMENT": "strict",
        # The pre-deploy step sets allocation - admin reserve as the database's CONNECTION LIMIT: one
        # environment misconfigured cannot take the other's connections (needs a non-superuser role).
        "DB_CONNECTION_CAP": "database",
        # Migrations run in the pre-deploy command, so the API does not run them again at start.
        "RUN_MIGRATIONS": "0",
    }
    for spec in topology.SERVICES:
        plan = sizing.plan(settings, spec.name)
        values[spec.processes_var] = str(plan.processes)
        values[spec.replicas_var] = str(plan.replicas)
    values |= {name: str(value) for name, value in found.env().items()}
    return values


def environment_values(environment: str) -> dict[str, Any]:
    """Everything the file says about one Railway environment, as plain data."""
    base = settings_for(environment, {"DB_BUDGET_DEPLOY_CASE": DEPLOY_CASE})
    fleet = _fleet_variables(base, environment)
    # The settings each service will run with: the fleet's values over the profile.
    settings = settings_for(environment, fleet)
    services: dict[str, Any] = {}
    for spec in topology.SERVICES:
        timing = deploy_timing(settings, spec)
        services[spec.name] = {
            "replicas": sizing.plan(settings, spec.name).replicas,
            "healthcheck": None if spec.is_worker else "/health",
            "overlap_seconds": timing.overlap,
            "overlap_why": timing.overlap_why,
            "draining_seconds": timing.draining,
            "draining_why": timing.draining_why,
        }
    return {"variables": fleet, "services": services}


def _literal(value: object) -> str:
    """``value`` as Python source (JSON's forms are Python's, but for None)."""
    return "None" if value is None else json.dumps(value, ensure_ascii=False)


def _wrap(text: str, indent: str, width: int = 108) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(indent) + 2 + len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [f"{indent}# {line}" for line in [*lines, line]]


HEADER = '''"""Railway infrastructure as code for the roadmap backend: four services, two environments.

GENERATED by scripts/update_generated.py from backend/app/topology.py and the connection budget
(`python -m app.budget --suggest`, planned for every service redeploying at once). Change those and
regenerate; never edit this file by hand (a test fails when it drifts).

Railway evaluates this file for the linked environment (`railway config plan`, then `railway config
apply`): "production" renders the 280-connection profile, "development" the 120 one. Before the first
apply, set these shared variables in each environment (the file only references them): DATABASE_URL,
CHECKPOINTER_DATABASE_URL (may be left empty: the main database), REDIS_URL, JWT_SECRET_KEY and
LLM_API_KEY (empty: the offline provider).

Every service runs migrations as its pre-deploy command: Railway deploys services independently (a
worker may be redeployed alone with code that needs the new schema), and prestart holds an advisory
lock, so the first to deploy migrates and the others find the schema at head and do nothing.
"""

from __future__ import annotations

from typing import Any

from railway_sdk import define_railway, project, service

PROJECT = "roadmap-backend"
'''

FOOTER = """

def _service(name: str, spec: dict[str, Any], variables: dict[str, Any], shared: Any) -> Any:
    env: dict[str, Any] = {**variables, "SERVICE_TYPE": name}
    env |= {ref: shared[ref] for ref in REFERENCED}
    deploy = {
        "restartPolicyType": "ON_FAILURE",
        "restartPolicyMaxRetries": 10,
        "overlapSeconds": spec["overlap_seconds"],
        "drainingSeconds": spec["draining_seconds"],
    }
    return service(
        name,
        build={"builder": "DOCKERFILE", "dockerfilePath": "Dockerfile"},
        start=f"scripts/railway_entrypoint.sh {name}",
        preDeploy=["scripts/prestart.sh"],
        healthcheck=spec["healthcheck"],
        healthcheckTimeout=60 if spec["healthcheck"] else None,
        replicas=spec["replicas"],
        deploy=deploy,
        env=env,
    )


@define_railway
def main(ctx: Any = None) -> Any:
    environment = getattr(ctx, "environment", None)
    if environment not in ENVIRONMENTS:
        # Another environment on the same instance would take connections no allocation gives it.
        raise ValueError(
            f"Railway environment {environment!r} has no connection allocation here; "
            f"this file renders {', '.join(ENVIRONMENTS)} (add a profile in backend/app/config/settings.py)"
        )
    values = ENVIRONMENTS[environment]
    resources = [
        _service(name, spec, values["variables"], ctx.shared) for name, spec in values["services"].items()
    ]
    return project(PROJECT, resources=resources)
"""


def render() -> str:
    lines = [HEADER.rstrip("\n"), ""]
    lines.append("# Referenced, never written: shared variables of each Railway environment.")
    lines.append(f"REFERENCED = {_literal(list(REFERENCED)).replace('[', '(').replace(']', ')')}")
    lines.append("")
    lines.append("ENVIRONMENTS: dict[str, dict[str, Any]] = {")
    for environment in ENVIRONMENTS:
        values = environment_values(environment)
        lines.append(f"    {_literal(environment)}: {{")
        lines += _wrap(
            "Every service gets the whole fleet's sizing: its start-up guard checks the fleet.", " " * 8
        )
        lines.append('        "variables": {')
        for name, value in values["variables"].items():
            lines.append(f"            {_literal(name)}: {_literal(value)},")
        lines.append("        },")
        lines.append('        "services": {')
        for name, spec in values["services"].items():
            lines.append(f"            {_literal(name)}: {{")
            lines.append(f'                "replicas": {spec["replicas"]},')
            lines.append(f'                "healthcheck": {_literal(spec["healthcheck"])},')
            lines += _wrap(f"overlap: {spec['overlap_why']}", " " * 16)
            lines.append(f'                "overlap_seconds": {spec["overlap_seconds"]},')
            lines += _wrap(f"draining: {spec['draining_why']}", " " * 16)
            lines.append(f'                "draining_seconds": {spec["draining_seconds"]},')
            lines.append("            },")
        lines.append("        },")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n" + FOOTER


def compile_graph(environment: str, path: Path = RAILWAY_FILE) -> dict[str, Any]:
    """The file evaluated as Railway's CLI does, offline: its project graph for ``environment``."""
    import importlib.util

    from railway_sdk import create_railway_context

    spec = importlib.util.spec_from_file_location("railway_iac", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(create_railway_context(environment=environment)).to_graph()  # type: ignore[no-any-return]
