"""The start-up guard: DB_BUDGET_ENFORCEMENT = off | warn | strict.

Two ceilings, both checked once per service start, against the steady state and the deploy window
planned for (``DB_BUDGET_DEPLOY_CASE``, app.budget.model):

* ``DB_CONNECTION_BUDGET``, this environment's allocation of the server;
* what the server itself leaves this environment: ``max_connections`` less the reserved slots and the
  other databases' connection limits (another environment's cap), read from the server. An
  allocation written for a 400-connection instance is no protection on a 100-connection one. When
  the server cannot be reached the guard says so and checks the allocation alone: the service's own
  pool will keep retrying.

Run by ``railway_entrypoint.sh`` (every service, once per start, before the server forks), and by the
processes it would otherwise not cover: a Celery worker's parent and the API app, when they were
started by another command (``DB_BUDGET_CHECKED`` unset).
"""

from __future__ import annotations

from dataclasses import replace

import psycopg
import structlog

from app.budget.audit import SERVER_LIMITS, server_limits_from_row
from app.budget.model import Budget, ServerLimits, budget_from_settings, budget_variables
from app.config.loading import InvalidSettingsError
from app.config.settings import Settings
from app.db.engine import direct_connection
from app.db.errors import is_database_misconfigured, misconfiguration_fix

log = structlog.get_logger("app.budget")


# Connection limits of the instance's other databases: another environment's cap (``--apply-cap``) is
# the part of the server it holds, whatever this environment's allocation says. Template databases
# and those that refuse connections hold nothing.
OTHER_CAPS = """
SELECT coalesce(sum(datconnlimit), 0)::int FROM pg_database
WHERE datconnlimit >= 0 AND datallowconn AND NOT datistemplate AND datname <> current_database()
"""


def probe_server_limits(settings: Settings) -> tuple[ServerLimits | None, str | None]:
    """``max_connections``, the reserved slots and the other databases' caps; or None and why not."""
    try:
        with direct_connection(settings, "guard") as conn:
            row = conn.execute(SERVER_LIMITS).fetchone()
            others = conn.execute(OTHER_CAPS).fetchone()
    except psycopg.Error as exc:
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if is_database_misconfigured(exc):
            return None, f"{misconfiguration_fix(exc)} ({said.rsplit('FATAL:', 1)[-1].strip()})"
        return None, f"{type(exc).__name__}: {said}"
    return replace(server_limits_from_row(row), others=int(others[0]) if others else 0), None


def read_server_limits(settings: Settings) -> ServerLimits | None:
    """The server's limits, or None (logged) when the server does not answer in time."""
    limits, error = probe_server_limits(settings)
    if limits is None:
        log.warning("db_server_limits_unknown", error=error)
    return limits


def _moment(budget: Budget) -> str:
    """Which moment is the peak: the steady state, or the deploy window planned for."""
    window = budget.deploy
    if window.worst_case <= budget.worst_case:
        return f"worst case {budget.worst_case}"
    during = f"{window.service} redeploying" if window.service else "every service redeploying"
    return (
        f"worst case {window.worst_case} while {during} "
        f"(DB_BUDGET_DEPLOY_CASE={window.case}; steady {budget.worst_case})"
    )


def overrun_message(budget: Budget) -> str:
    problems = []
    if budget.overrun:
        problems.append(
            f"{_moment(budget)} > DB_CONNECTION_BUDGET {budget.allocation} (over by {budget.overrun})"
        )
    if budget.server_overrun and budget.server is not None:
        problems.append(
            f"{_moment(budget)} > {budget.server.describe()} that the server leaves this environment "
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
            deploy_worst_case=budget.deploy.worst_case,
            deploy_case=budget.deploy.case,
            allocation=budget.allocation,
            over_by=budget.overrun,
            server_available=None if budget.server is None else budget.server.available,
            over_server_by=budget.server_overrun,
            guide_estimate=budget.guide_total,
            budget_service=service or settings.SERVICE_TYPE,
            change=", ".join(budget_variables()),
        )
    return budget
