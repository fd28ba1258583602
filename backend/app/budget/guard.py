"""The start-up guard: DB_BUDGET_ENFORCEMENT = off | warn | strict.

Two ceilings, both checked once per service start:

* ``DB_CONNECTION_BUDGET``, this environment's allocation of the server;
* what the server itself accepts from an ordinary role: ``max_connections`` less the reserved slots,
  read from the server (one short query). An allocation written for a 400-connection instance is no
  protection on a 100-connection one. When the server cannot be reached the guard says so and checks
  the allocation alone: the service's own pool will keep retrying.

Run by ``railway_entrypoint.sh`` (every service, once per start, before the server forks), and by the
processes it would otherwise not cover: a Celery worker's parent and the API app, when they were
started by another command (``DB_BUDGET_CHECKED`` unset).
"""

from __future__ import annotations

import psycopg
import structlog

from app.budget.audit import SERVER_LIMITS, server_limits_from_row
from app.budget.model import Budget, ServerLimits, budget_from_settings, budget_variables
from app.config.settings import InvalidSettingsError, Settings
from app.db.engine import direct_connection

log = structlog.get_logger("app.budget")


def read_server_limits(settings: Settings) -> ServerLimits | None:
    """``max_connections`` and the reserved slots, or None when the server does not answer in time."""
    try:
        with direct_connection(settings, "guard") as conn:
            row = conn.execute(SERVER_LIMITS).fetchone()
    except psycopg.Error as exc:
        log.warning("db_server_limits_unknown", error_type=type(exc).__name__, error=str(exc))
        return None
    return server_limits_from_row(row)


def overrun_message(budget: Budget) -> str:
    problems = []
    if budget.overrun:
        problems.append(
            f"worst case {budget.worst_case} > DB_CONNECTION_BUDGET {budget.allocation} "
            f"(over by {budget.overrun})"
        )
    if budget.server_overrun and budget.server is not None:
        problems.append(
            f"worst case {budget.worst_case} > {budget.server.describe()} that the server accepts "
            f"(over by {budget.server_overrun})"
        )
    return (
        f"connection budget exceeded: {'; '.join(problems)}; lower {', '.join(budget_variables())} "
        "(python -m app.budget --suggest), or set DB_BUDGET_ENFORCEMENT=warn"
    )


def enforce_budget(
    settings: Settings, service: str | None = None, *, read_server: bool = True
) -> Budget | None:
    """Log (warn) or refuse (strict) a topology that cannot fit."""
    if settings.DB_BUDGET_ENFORCEMENT == "off":
        return None
    budget = budget_from_settings(settings, read_server_limits(settings) if read_server else None)
    if not budget.fits:
        if settings.DB_BUDGET_ENFORCEMENT == "strict":
            raise InvalidSettingsError(overrun_message(budget))
        log.warning(
            "db_budget_exceeded",
            worst_case=budget.worst_case,
            allocation=budget.allocation,
            over_by=budget.overrun,
            server_usable=None if budget.server is None else budget.server.usable,
            over_server_by=budget.server_overrun,
            guide_estimate=budget.guide_total,
            budget_service=service or settings.SERVICE_TYPE,
            change=", ".join(budget_variables()),
        )
    return budget
