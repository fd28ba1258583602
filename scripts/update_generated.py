#!/usr/bin/env python3
"""Regenerate what is derived from the topology and the settings, so docs and deploy files cannot drift.

python scripts/update_generated.py          # rewrite them
python scripts/update_generated.py --check  # exit 1 if any is out of date (the tests do this)

* docs/connection-pool-guide.md: the budget tables (python -m app.budget) and the Railway variables;
* deploy/railway/<service>.json: Railway config as code, one file per service of app/topology.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "connection-pool-guide.md"
RAILWAY = ROOT / "deploy" / "railway"
sys.path.insert(0, str(ROOT / "backend"))

from app import topology  # noqa: E402
from app.budget.__main__ import render, settings_for  # noqa: E402
from app.budget.model import budget_from_settings  # noqa: E402


def railway_config(service: topology.Service) -> dict[str, object]:
    """One service in Railway's railway.json format (https://docs.railway.com/config-as-code/reference).

    The start command overrides the image's ENTRYPOINT (exec form, no shell), so it names the
    entrypoint and the service itself. Migrations run in preDeployCommand: once per deploy, not once
    per replica, and safe when two services deploy at once (prestart's advisory lock); the API's start
    command then skips its own. numReplicas is the service's replicas in app/topology.py: scale by
    raising it there and regenerating, so the file and the budget change together.
    """
    plan = topology.plan(settings_for("production"), service.name)
    start = f"scripts/railway_entrypoint.sh {service.name}"
    deploy: dict[str, object] = {
        "startCommand": start if service.is_worker else f"env RUN_MIGRATIONS=0 {start}",
        "preDeployCommand": ["scripts/prestart.sh"],
        "numReplicas": plan.replicas,
        "restartPolicyType": "ON_FAILURE",
        "restartPolicyMaxRetries": 10,
    }
    if not service.is_worker:
        deploy |= {"healthcheckPath": "/health", "healthcheckTimeout": 60}
    return {
        "$schema": "https://railway.com/railway.schema.json",
        "build": {"builder": "DOCKERFILE", "dockerfilePath": "Dockerfile"},
        "deploy": deploy,
    }


def railway_files() -> dict[Path, str]:
    return {
        RAILWAY / f"{s.name}.json": json.dumps(railway_config(s), indent=2) + "\n" for s in topology.SERVICES
    }


def railway_variables() -> str:
    """The guide's Railway section: each service's variables, for both environments."""
    prod, dev = settings_for("production"), settings_for("development")
    lines = [
        "| service | config file | `SERVICE_TYPE` | variable | production | development |",
        "|---|---|---|---|---:|---:|",
    ]
    for s in topology.SERVICES:
        p, d = topology.plan(prod, s.name), topology.plan(dev, s.name)
        title = s.title.format(n=p.processes).split(" (")[0]
        # A fixed-size pool holds the shared maximum, all persistent (app.topology.Service.fixed_pool).
        size_fallback = "`DB_POOL_SIZE + DB_MAX_OVERFLOW`" if s.fixed_pool else "`DB_POOL_SIZE`"
        overflow_fallback = "0: a fixed-size pool" if s.fixed_pool else "`DB_MAX_OVERFLOW`"
        first = f"| {title} | `deploy/railway/{s.name}.json` | `{s.name}` "
        rows = [
            (f"`{s.processes_var}`", p.processes, d.processes),
            (f"`{s.replicas_var}`", p.replicas, d.replicas),
            (f"`{s.pool_size_var}` (else {size_fallback})", p.pool.pool_size, d.pool.pool_size),
            (f"`{s.max_overflow_var}` (else {overflow_fallback})", p.pool.max_overflow, d.pool.max_overflow),
        ]
        if s.checkpointer:
            rows.append(("`LANGGRAPH_POOL_MAX_SIZE`", p.langgraph_max_size, d.langgraph_max_size))
        if s.time_limit is not None:
            rows.append((f"`{s.time_limit_var}`", p.time_limit, d.time_limit))
        for i, (name, prod_value, dev_value) in enumerate(rows):
            head = first if i == 0 else "| | | "
            lines.append(f"{head}| {name} | {prod_value} | {dev_value} |")
    lines += [
        "| every service | | | `ENVIRONMENT` | production | development |",
        f"| | | | `DB_CONNECTION_BUDGET` / `DB_ADMIN_RESERVE` | {prod.DB_CONNECTION_BUDGET} / "
        f"{prod.DB_ADMIN_RESERVE} | {dev.DB_CONNECTION_BUDGET} / {dev.DB_ADMIN_RESERVE} |",
        f"| | | | `POSTGRES_DB` (or `DATABASE_URL`) | {prod.POSTGRES_DB} | {dev.POSTGRES_DB} |",
    ]
    return "\n".join(lines)


def generated_doc(text: str) -> str:
    def section(match: re.Match[str]) -> str:
        name = match.group(1)
        body = railway_variables() if name == "railway" else render(budget_from_settings(settings_for(name)))
        return f"<!-- budget:{name} -->\n{body}\n<!-- /budget:{name} -->"

    return re.sub(r"<!-- budget:(\w+) -->.*?<!-- /budget:\1 -->", section, text, flags=re.DOTALL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    wanted = {DOC: generated_doc(DOC.read_text()), **railway_files()}
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    extra = sorted(set(RAILWAY.glob("*.json")) - set(wanted))
    if args.check:
        for path in [*stale, *extra]:
            print(f"{path.relative_to(ROOT)} is stale: python scripts/update_generated.py", file=sys.stderr)
        return 1 if stale or extra else 0
    RAILWAY.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_text(wanted[path])
    for path in extra:
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
