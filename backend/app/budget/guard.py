"""The start-up guard: DB_BUDGET_ENFORCEMENT = off | warn | strict.

Run once per service start: by ``railway_entrypoint.sh`` (every service), by a Celery worker's parent
when started by hand, and at API import unless the entrypoint already did it (``DB_BUDGET_CHECKED``).
"""

from __future__ import annotations

import os

import structlog

from app.budget.model import BUDGET_VARIABLES, Budget, budget_from_settings
from app.config.settings import InvalidSettingsError, Settings

log = structlog.get_logger("app.budget")

CHECKED_MARKER = "DB_BUDGET_CHECKED"


def overrun_message(budget: Budget) -> str:
    return (
        f"connection budget exceeded: worst case {budget.worst_case} > DB_CONNECTION_BUDGET "
        f"{budget.allocation} (over by {budget.overrun}); lower {', '.join(BUDGET_VARIABLES)} "
        "(python -m app.budget --suggest), or set DB_BUDGET_ENFORCEMENT=warn"
    )


def enforce_budget(settings: Settings, service: str | None = None, *, force: bool = False) -> None:
    """Log (warn) or refuse (strict) an over-allocated topology; once per service start."""
    if settings.DB_BUDGET_ENFORCEMENT == "off" or (os.environ.get(CHECKED_MARKER) == "1" and not force):
        return
    budget = budget_from_settings(settings)
    if budget.overrun:
        if settings.DB_BUDGET_ENFORCEMENT == "strict":
            raise InvalidSettingsError(overrun_message(budget))
        log.warning(
            "db_budget_exceeded",
            worst_case=budget.worst_case,
            allocation=budget.allocation,
            over_by=budget.overrun,
            guide_estimate=budget.guide_total,
            budget_service=service or settings.SERVICE_TYPE,
            change=", ".join(BUDGET_VARIABLES),
        )
    os.environ[CHECKED_MARKER] = "1"
