"""``python -m app.budget``: the budget from the code's own numbers, suggestions, audit, start-up guard.

python -m app.budget                              # the settings of this environment (env vars)
python -m app.budget --environment development    # a profile, without this shell's variables
python -m app.budget --set API_REPLICAS=3         # what if (repeatable; over either of the above)
python -m app.budget --json                       # machine-readable; exit 1 when it does not fit
python -m app.budget --suggest [--json]           # pool sizes that fit the allocation, the server and
                                                  # the deploy window (DB_BUDGET_DEPLOY_CASE)
python -m app.budget --audit [--json]             # pg_stat_activity: this environment and the instance
python -m app.budget --guard [--service api]      # the start-up guard (exit 1 when strict refuses)
python -m app.budget --pgbouncer                  # pgbouncer.ini caps for the allocation
python -m app.budget --apply-cap [--dry-run]      # the server's CONNECTION LIMIT (DB_CONNECTION_CAP)

The budget holds the steady state and the worst moment of a rolling deploy (a service's old and new
deployments side by side) to the allocation; --json carries both. Exit status 1 when the budget (or
the suggestion) does not fit, or when an audit finds a service over
its budget or the environment over its allocation: usable as a deploy gate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from app.budget.audit import Audit, run_audit
from app.budget.guard import enforce_budget, probe_server_limits
from app.budget.model import Budget, DeployWindow, Suggestion, budget_from_settings, guide_processes, suggest
from app.config.loading import InvalidSettingsError
from app.config.settings import Settings, get_settings
from app.core.logging import configure_logging
from app.db import connection_cap
from app.db.engine import build_unpooled_engine, engine_options
from app.sizing import ServicePlan


def settings_for(environment: str | None, overrides: dict[str, str] | None = None) -> Settings:
    """This process's settings, or a profile's without the shell's variables (reproducible tables)."""
    if environment is None and not overrides:
        return get_settings()
    try:
        if environment is None:
            return Settings.load(**(overrides or {}))
        return Settings.from_mapping({"ENVIRONMENT": environment, **(overrides or {})})
    except InvalidSettingsError as exc:
        raise InvalidSettingsError(f"{exc} (for {environment or 'this environment'})") from None


def _label(plan: ServicePlan) -> str:
    spec = plan.service
    label = spec.title.format(n=plan.processes)
    if spec.is_worker:
        label += f" (1 parent + {plan.processes} children)"
    return label + (f" x {plan.replicas} replicas" if plan.replicas > 1 else "")


def render(budget: Budget) -> str:
    verdict = "<" if budget.guide_total < budget.allocation else ">="
    mark = "fits" if budget.guide_total < budget.allocation else "DOES NOT FIT"
    per = {s.per_process for s in budget.services}
    per_cell = str(per.pop()) if len(per) == 1 else "varies"
    lines = [
        f"### Connection budget: {budget.environment} (allocation {budget.allocation})",
        "",
        "As the guide counts (each Celery parent included, the LangGraph pool once, "
        f"{round(100 * budget.peak_factor)}% estimated peak):",
        "",
        "| component | processes | per process | total |",
        "|---|---:|---:|---:|",
    ]
    for s in budget.services:
        processes = guide_processes(s)
        lines.append(f"| {_label(s)} | {processes} | {s.per_process} | {processes * s.per_process} |")
    lines += [
        f"| SQLAlchemy theoretical max | {budget.guide_processes} | {per_cell} | "
        f"{budget.sqlalchemy_theoretical} |",
        f"| estimated real peak ({round(100 * budget.peak_factor)}%) | | | {budget.estimated_peak} |",
        f"| LangGraph checkpointer pool | | | {budget.langgraph_max_size} |",
        f"| reserved for admin (psql, monitoring) | | | {budget.admin_reserve} |",
        f"| **total** | | | **{budget.guide_total} {verdict} {budget.allocation}** ({mark}) |",
        "",
        "What really opens connections (prefork parents open none; every workflow child that runs a graph "
        "has its own checkpointer pool; every replica brings its own pools):",
        "",
        "| service | replicas | processes | pool | SQLAlchemy | LangGraph | max connections |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in budget.services:
        pool = f"{s.pool.pool_size} + {s.pool.max_overflow}"
        row = (s.name, s.replicas, s.total_processes, pool, s.sqlalchemy, s.langgraph, s.max_connections)
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    lines += [
        f"| reserved for admin | | | | | | {budget.admin_reserve} |",
        f"| **worst case** | | | | | | **{budget.worst_case}** |",
        "",
        *render_windows(budget),
    ]
    if budget.worst_case > budget.allocation:
        lines.append(
            f"At full load the guide's own count is {budget.sqlalchemy_theoretical} + "
            f"{budget.langgraph_max_size} + {budget.admin_reserve} = {budget.guide_theoretical_total}, "
            f"and what the processes can really open is {budget.worst_case}, against an allocation of "
            f"{budget.allocation}: **over by {budget.worst_case - budget.allocation}**. The "
            f"{budget.guide_total} above is an "
            "estimate, not a limit; `python -m app.budget --suggest` computes sizes that fit."
        )
    elif budget.overrun:
        lines.append(
            f"The steady state ({budget.worst_case}) fits the allocation ({budget.allocation}), but the "
            f"deploy window planned for does not ({budget.deploy.worst_case}): **over by "
            f"{budget.overrun}**; `python -m app.budget --suggest` computes sizes that fit both."
        )
    else:
        lines.append(
            f"The worst case ({budget.worst_case}) and the deploy window planned for "
            f"({budget.deploy.worst_case}) fit the allocation ({budget.allocation}), with "
            f"{budget.allocation - budget.peak} to spare at the peak."
        )
    if budget.server is not None and budget.server_overrun:
        lines.append(
            f"The server accepts {budget.server.describe()}: the worst case is over by "
            f"{budget.server_overrun}."
        )
    return "\n".join(lines)


def _window_label(window: DeployWindow) -> str:
    if window.case == "all_services":
        return "every service redeploying at once (one push)"
    if window.case == "one_service":
        return f"one service redeploying at a time (worst: {window.service})"
    return "no overlap"


def render_windows(budget: Budget) -> list[str]:
    """The steady state against each moment of a rolling deploy, the planned one marked."""
    lines = [
        "In a rolling deploy a service's old and new deployments run side by side until the old one is "
        "stopped: its pools count twice.",
        "",
        "| moment | max connections | |",
        "|---|---:|---|",
        f"| steady | {budget.worst_case} | |",
    ]
    totals = {s.name: s.max_connections for s in budget.services}
    for name, total in totals.items():
        lines.append(f"| {name} redeploying | {budget.worst_case + total} | |")
    for case in ("one_service", "all_services"):
        window = budget.window(case)
        mark = f"planned (`DB_BUDGET_DEPLOY_CASE={case}`)" if case == budget.deploy_case else ""
        lines.append(f"| {_window_label(window)} | {window.worst_case} | {mark} |")
    return [*lines, ""]


def render_suggestion(found: Suggestion) -> str:
    where = f"allocation {found.allocation}"
    if found.server is not None:
        where += f", the server leaves {found.server.available}"
    lines = [
        f"## Suggested pools: {found.environment} ({where}; admin reserve {found.admin_reserve}; "
        f"planned for {_window_label(found.deploy)})",
        "",
    ]
    if found.server_error:
        lines += [f"server not reachable ({found.server_error}): sized for the allocation alone", ""]
    lines += [f"- {s.service}: {s.reason} -> {s.max_connections}" for s in found.services]
    lines.append("")
    if found.advice:
        lines.append(
            f"nothing fits {found.ceiling}: {found.advice} (at the smallest pools: steady "
            f"{found.worst_case}, deploy window {found.deploy.worst_case})"
        )
        return "\n".join(lines)
    lines += [f"{name}={value}" for name, value in found.env().items()]
    lines += [
        "",
        f"steady {found.worst_case}, deploy window {found.deploy.worst_case} <= {found.ceiling}",
    ]
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


def render_audit(audit: Audit) -> str:
    lines = [
        f"## {audit.environment}: database {audit.database}, allocation {audit.allocation}",
        "",
        "| service | SQLAlchemy | LangGraph | total | budget | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in audit.services:
        flag = "ok" if s.within_budget else "OVER"
        lines.append(f"| {s.service} | {s.sqlalchemy} | {s.langgraph} | {s.total} | {s.budget} | {flag} |")
    flag = "ok" if audit.charged <= audit.allocation else "OVER"
    lines += [
        f"| other (psql, migrations, tools) | | | {audit.other} | {audit.admin_reserve} | |",
        f"| **charged to {audit.environment}** | | | **{audit.charged}** | **{audit.allocation}** | {flag} |",
        "",
    ]
    if audit.elsewhere:
        lines += ["Elsewhere on the server (not charged here):", "",
                  "| database | application_name | count |", "|---|---|---:|"]  # fmt: skip
        lines += [f"| {e['datname']} | {e['application_name']} | {e['count']} |" for e in audit.elsewhere]
        lines.append("")
    server = audit.server
    verdict = "<=" if audit.allocations_total <= server.usable else ">"
    lines += [
        "The instance:",
        "",
        "| environment | allocation | used |",
        "|---|---:|---:|",
        *[f"| {e.environment} | {e.allocation} | {e.used} |" for e in audit.environments],
        f"| **all known** | **{audit.allocations_total}** {verdict} {server.describe()} | "
        f"{audit.server_total} client connections |",
        "",
        f"Cap on the server: database {audit.database} {audit.cap.database_limit}, role {audit.cap.role} "
        f"{audit.cap.role_limit} (-1: none); expected {audit.cap_expected} "
        f"(DB_CONNECTION_CAP={audit.cap_scope}): {'matches' if audit.cap_matches else 'DOES NOT MATCH'}"
        + (" (the role is a superuser: exempt)" if audit.cap.superuser else ""),
    ]
    return "\n".join(lines)


async def _audit(settings: Settings) -> Audit:
    engine = build_unpooled_engine(engine_options(settings, "audit"))
    try:
        async with engine.connect() as conn:
            return await run_audit(conn, settings)
    finally:
        await engine.dispose()


def _overrides(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep:
            raise SystemExit(f"--set expects NAME=VALUE, got {pair!r}")
        if name not in Settings.model_fields:
            raise SystemExit(f"--set {name}: no such setting (a misspelt name would be silently ignored)")
        values[name] = value.strip()
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--environment", choices=["development", "production"])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a setting")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--suggest", action="store_true")
    parser.add_argument(
        "--no-server",
        action="store_true",
        help="with --suggest: size for the allocation alone, asking no server",
    )
    group.add_argument("--audit", action="store_true")
    group.add_argument("--guard", action="store_true")
    group.add_argument("--pgbouncer", action="store_true", help="pgbouncer.ini settings for the allocation")
    group.add_argument("--apply-cap", action="store_true", help="the allocation as CONNECTION LIMIT")
    parser.add_argument("--dry-run", action="store_true", help="with --apply-cap: only print the SQL")
    parser.add_argument("--service", default=None, help="with --guard: the service being started")
    args = parser.parse_args(argv)
    try:
        settings = settings_for(args.environment, _overrides(args.set))
        if args.guard:
            configure_logging(settings, service=args.service)
            enforce_budget(settings, args.service)
    except InvalidSettingsError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.guard:
        return 0
    if args.pgbouncer:
        print(render_pgbouncer(budget_from_settings(settings)))
        return 0
    if args.apply_cap:
        return connection_cap.command(settings, dry_run=args.dry_run)
    if args.suggest:
        server, error = (None, None) if args.no_server else probe_server_limits(settings)
        found = suggest(settings, server, error)
        print(json.dumps(found.as_dict(), indent=2) if args.json else render_suggestion(found))
        return 0 if found.fits else 1
    if args.audit:
        audit = asyncio.run(_audit(settings))
        print(json.dumps(audit.as_dict(), indent=2, default=str) if args.json else render_audit(audit))
        return 0 if audit.ok else 1
    budget = budget_from_settings(settings)
    print(json.dumps(budget.as_dict(), indent=2) if args.json else render(budget))
    return 0 if budget.fits else 1


if __name__ == "__main__":
    sys.exit(main())
