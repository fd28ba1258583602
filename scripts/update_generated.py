#!/usr/bin/env python3
"""Regenerate what is derived from the topology and the settings, so docs and deploy files cannot drift.

python scripts/update_generated.py          # rewrite them
python scripts/update_generated.py --check  # exit 1 if any is out of date (the tests do this)

* docs/connection-pool-guide.md: the budget tables (python -m app.budget) and the Railway variables;
* .railway/railway.py: Railway infrastructure as code for both environments (devkit/railway_config.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from app import sizing, topology
from app.budget.__main__ import render, settings_for
from app.budget.model import budget_from_settings
from devkit import railway_config

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "connection-pool-guide.md"


def railway_variables() -> str:
    """The guide's Railway section: each service's variables, for both environments, as the Railway
    file sets them (the pools --suggest fits to the deploy window)."""
    rendered = {env: railway_config.environment_values(env) for env in railway_config.ENVIRONMENTS}
    prod, dev = (settings_for(env, rendered[env]["variables"]) for env in ("production", "development"))
    lines = [
        "| service | `SERVICE_TYPE` | variable | production | development |",
        "|---|---|---|---:|---:|",
    ]
    for s in topology.SERVICES:
        p, d = sizing.plan(prod, s.name), sizing.plan(dev, s.name)
        title = s.title.format(n=p.processes).split(" (")[0]
        # A fixed-size pool holds the shared maximum, all persistent (app.topology.Service.fixed_pool).
        size_fallback = "`DB_POOL_SIZE + DB_MAX_OVERFLOW`" if s.fixed_pool else "`DB_POOL_SIZE`"
        overflow_fallback = "0: a fixed-size pool" if s.fixed_pool else "`DB_MAX_OVERFLOW`"
        first = f"| {title} | `{s.name}` "
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
        timing = [rendered[env]["services"][s.name] for env in ("production", "development")]
        rows += [
            ("`overlapSeconds` (Railway)", timing[0]["overlap_seconds"], timing[1]["overlap_seconds"]),
            ("`drainingSeconds` (Railway)", timing[0]["draining_seconds"], timing[1]["draining_seconds"]),
        ]
        for i, (name, prod_value, dev_value) in enumerate(rows):
            head = first if i == 0 else "| | "
            lines.append(f"{head}| {name} | {prod_value} | {dev_value} |")
    lines += [
        "| every service | | `ENVIRONMENT` | production | development |",
        f"| | | `DB_CONNECTION_BUDGET` / `DB_ADMIN_RESERVE` | {prod.DB_CONNECTION_BUDGET} / "
        f"{prod.DB_ADMIN_RESERVE} | {dev.DB_CONNECTION_BUDGET} / {dev.DB_ADMIN_RESERVE} |",
        f"| | | `DB_BUDGET_DEPLOY_CASE` / `DB_BUDGET_ENFORCEMENT` | {prod.DB_BUDGET_DEPLOY_CASE} / "
        f"{prod.DB_BUDGET_ENFORCEMENT} | {dev.DB_BUDGET_DEPLOY_CASE} / {dev.DB_BUDGET_ENFORCEMENT} |",
        f"| | | `DB_CONNECTION_CAP` (applied by the pre-deploy step) | {prod.DB_CONNECTION_CAP} | "
        f"{dev.DB_CONNECTION_CAP} |",
        f"| | | `POSTGRES_DB` (the database `DATABASE_URL` names) | {prod.POSTGRES_DB} | {dev.POSTGRES_DB} |",
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
    wanted = {DOC: generated_doc(DOC.read_text()), railway_config.RAILWAY_FILE: railway_config.render()}
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: python scripts/update_generated.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
    return 0


if __name__ == "__main__":
    sys.exit(main())
