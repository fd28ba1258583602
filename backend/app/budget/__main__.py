"""``python -m app.budget``: the guide's budget tables from the code's own numbers, suggestions, audit.

python -m app.budget                              # the settings of this environment (env vars)
python -m app.budget --environment development    # .env.development.example over the defaults
python -m app.budget --environment production     # the code's defaults (the production values)
python -m app.budget --suggest                    # pool sizes that fit DB_CONNECTION_BUDGET
python -m app.budget --audit                      # pg_stat_activity by service against the budget
python -m app.budget --guard --service api        # the start-up guard (exit 1 when strict refuses)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from dotenv import dotenv_values

from app.budget.audit import run_audit
from app.budget.guard import enforce_budget
from app.budget.model import Budget, budget_from_settings, suggest
from app.config.settings import InvalidSettingsError, Settings, get_settings, settings_from_mapping

REPO = Path(__file__).resolve().parents[3]
LABELS = {
    "api": "FastAPI API (`uvicorn --workers {n}`)",
    "celery_logs": "Celery `logs` ({p})",
    "celery_content": "Celery `content_generation` ({p})",
    "celery_workflow": "Celery `roadmap_workflow` ({p})",
}


def settings_for(environment: str | None) -> Settings:
    """The environment's settings without the shell's variables, so the tables are reproducible."""
    if environment is None:
        return get_settings()
    values: dict[str, object] = {}
    if environment == "development":
        example = REPO / ".env.development.example"
        if not example.exists():
            raise SystemExit(f"{example} not found (run from a checkout of the repository)")
        values = {k: v for k, v in dotenv_values(example).items() if v not in (None, "")}
    values["ENVIRONMENT"] = environment
    try:
        return settings_from_mapping(values)
    except InvalidSettingsError as exc:
        raise InvalidSettingsError(f"{exc} (for {environment})") from None


def render(budget: Budget) -> str:
    verdict = "<" if budget.guide_total < budget.allocation else ">="
    mark = "fits" if budget.guide_total < budget.allocation else "DOES NOT FIT"
    lines = [
        f"## Connection budget: {budget.environment} (allocation {budget.allocation})",
        "",
        "As the guide counts (each Celery parent included, the LangGraph pool once, "
        f"{round(100 * budget.peak_factor)}% estimated peak):",
        "",
        "| component | processes | per process | total |",
        "|---|---:|---:|---:|",
    ]
    for s in budget.services:
        children = s.real_processes
        label = LABELS[s.service].format(n=children, p=f"1 parent + {children} children")
        lines.append(f"| {label} | {s.guide_processes} | {s.per_process} | {s.guide_total} |")
    per, theoretical = budget.services[0].per_process, budget.sqlalchemy_theoretical
    lines += [
        f"| SQLAlchemy theoretical max | {budget.guide_processes} | {per} | {theoretical} |",
        f"| estimated real peak ({round(100 * budget.peak_factor)}%) | | | {budget.estimated_peak} |",
        f"| LangGraph checkpointer pool | | | {budget.langgraph_max_size} |",
        f"| reserved for admin (psql, monitoring) | | | {budget.admin_reserve} |",
        f"| **total** | | | **{budget.guide_total} {verdict} {budget.allocation}** ({mark}) |",
        "",
        "What really opens connections (prefork parents open none; every workflow child that runs a graph "
        "has its own checkpointer pool):",
        "",
        "| service | processes | SQLAlchemy | LangGraph | max connections |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in budget.services:
        row = (s.service, s.real_processes, s.real_sqlalchemy, s.real_langgraph, s.real_total)
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    lines += [
        f"| reserved for admin | | | | {budget.admin_reserve} |",
        f"| **worst case** | | | | **{budget.worst_case}** |",
        "",
    ]
    if budget.overrun:
        lines.append(
            f"At full load the guide's own count is {budget.sqlalchemy_theoretical} + "
            f"{budget.langgraph_max_size} + {budget.admin_reserve} = {budget.guide_theoretical_total}, "
            f"and what the processes can really open is {budget.worst_case}, against an allocation of "
            f"{budget.allocation}: **over by {budget.overrun}**. The {budget.guide_total} above is an "
            "estimate, not a limit; `python -m app.budget --suggest` computes sizes that fit."
        )
    else:
        lines.append(
            f"The worst case ({budget.worst_case}) fits the allocation ({budget.allocation}) with "
            f"{budget.allocation - budget.worst_case} to spare."
        )
    return "\n".join(lines)


def render_suggestion(settings: Settings) -> str:
    found = suggest(settings)
    budget = budget_from_settings(settings)
    if found is None:
        return (
            f"no pool size fits: {sum(s.real_processes for s in budget.services)} processes cannot each "
            f"have a connection within {budget.allocation} - {budget.admin_reserve}; lower the process counts"
        )
    lines = [
        f"To fit {budget.allocation} with this topology (api {settings.UVICORN_WORKERS}, logs "
        f"{settings.CELERY_LOGS_CONCURRENCY}, content {settings.CELERY_CONTENT_CONCURRENCY}, workflow "
        f"{settings.CELERY_WORKFLOW_CONCURRENCY} processes):",
        "",
    ]
    lines += [f"{name}={value}" for name, value in found.env().items()]
    lines += ["", f"worst case {found.worst_case} <= {found.allocation}"]
    return "\n".join(lines)


def render_pgbouncer(budget: Budget) -> str:
    return "\n".join(
        [
            f"; {budget.environment}: allocation {budget.allocation} - admin reserve {budget.admin_reserve}",
            "[pgbouncer]",
            "pool_mode = transaction",
            f"max_db_connections = {budget.pgbouncer_max_db_connections}",
            f"default_pool_size = {budget.pgbouncer_max_db_connections}",
            "max_client_conn = 2000",
            "; and in the services: DB_BEHIND_PGBOUNCER=true",
        ]
    )


async def _audit(settings: Settings) -> str:
    from app.db.engine import build_unpooled_engine

    engine = build_unpooled_engine(settings, service="audit")
    try:
        async with engine.connect() as conn:
            audit = await run_audit(conn, settings)
    finally:
        await engine.dispose()
    lines = [
        f"| service ({audit.environment}) | SQLAlchemy | LangGraph | total | budget | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in audit.services:
        flag = "ok" if s.within_budget else "OVER"
        lines.append(f"| {s.service} | {s.sqlalchemy} | {s.langgraph} | {s.total} | {s.budget} | {flag} |")
    lines += [
        f"| other (admin, migrations, other environments) | | | {audit.other} | {audit.admin_reserve} | |",
        f"| **this environment** | | | **{audit.environment_total}** | **{audit.allocation}** | |",
        "",
        f"database total {audit.database_total}, server total {audit.server_total} client connections",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--environment", choices=["development", "production"])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--suggest", action="store_true")
    group.add_argument("--audit", action="store_true")
    group.add_argument("--guard", action="store_true")
    group.add_argument("--pgbouncer", action="store_true", help="pgbouncer.ini settings for the allocation")
    parser.add_argument("--service", default=None, help="with --guard: the service being started")
    args = parser.parse_args(argv)
    settings = settings_for(args.environment)
    if args.guard:
        from app.core.logging import configure_logging

        configure_logging(settings, service=args.service)
        try:
            enforce_budget(settings, args.service, force=True)
        except InvalidSettingsError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    if args.pgbouncer:
        print(render_pgbouncer(budget_from_settings(settings)))
    elif args.suggest:
        print(render_suggestion(settings))
    elif args.audit:
        print(asyncio.run(_audit(settings)))
    else:
        print(render(budget_from_settings(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
