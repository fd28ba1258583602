"""The live audit: the guide's pg_stat_activity queries, each service's real count against its budget.

Services are recognised by ``application_name = <environment>.<service>`` (SQLAlchemy pools) and
``<environment>.<service>.langgraph`` (checkpointer pools); anything else (psql, monitoring, migrations,
other environments sharing the server) is "other" and set against the admin reserve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.budget.model import budget_from_settings
from app.config.settings import Settings
from app.core import metrics

# The guide's two queries.
BY_CLIENT = """
SELECT datname, usename, application_name, client_addr::text AS client_addr, state, count(*) AS n
FROM pg_stat_activity
WHERE datname IS NOT NULL
GROUP BY datname, usename, application_name, client_addr, state
ORDER BY n DESC
"""
DATABASE_TOTAL = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
SERVER_TOTAL = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"


@dataclass
class ServiceAudit:
    service: str
    sqlalchemy: int
    langgraph: int
    budget: int

    @property
    def total(self) -> int:
        return self.sqlalchemy + self.langgraph

    @property
    def within_budget(self) -> bool:
        return self.total <= self.budget


@dataclass
class Audit:
    environment: str
    allocation: int
    admin_reserve: int
    services: list[ServiceAudit]
    other: int
    database_total: int
    server_total: int
    rows: list[dict[str, Any]]

    @property
    def environment_total(self) -> int:
        return sum(s.total for s in self.services)

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "allocation": self.allocation,
            "admin_reserve": self.admin_reserve,
            "environment_total": self.environment_total,
            "within_allocation": self.environment_total + self.other <= self.allocation,
            "other": self.other,
            "database_total": self.database_total,
            "server_total": self.server_total,
            "services": [
                {**asdict(s), "total": s.total, "within_budget": s.within_budget} for s in self.services
            ],
            "connections": self.rows,
        }


async def run_audit(conn: AsyncSession | AsyncConnection, settings: Settings) -> Audit:
    budget = budget_from_settings(settings)
    rows = [dict(r._mapping) for r in (await conn.execute(text(BY_CLIENT))).all()]
    database_total = int(await conn.scalar(text(DATABASE_TOTAL)) or 0)
    server_total = int(await conn.scalar(text(SERVER_TOTAL)) or 0)
    prefix = f"{settings.ENVIRONMENT}."
    counts: dict[str, int] = {}
    for row in rows:
        name = row["application_name"] or ""
        counts[name] = counts.get(name, 0) + int(row["n"])
    services = []
    known: set[str] = set()
    for s in budget.services:
        plain, graph = f"{prefix}{s.service}", f"{prefix}{s.service}.langgraph"
        known |= {plain, graph}
        services.append(
            ServiceAudit(s.service, counts.get(plain, 0), counts.get(graph, 0), budget=s.real_total)
        )
    other = sum(n for name, n in counts.items() if name not in known)
    return Audit(
        environment=settings.ENVIRONMENT,
        allocation=budget.allocation,
        admin_reserve=budget.admin_reserve,
        services=services,
        other=other,
        database_total=database_total,
        server_total=server_total,
        rows=rows,
    )


def publish(audit: Audit) -> None:
    """Server-side counts as Prometheus gauges: alerts fire on what the server sees, not on pools."""
    for s in audit.services:
        metrics.DB_SERVER_CONNECTIONS.labels(s.service).set(s.total)
        metrics.DB_CONNECTION_SERVICE_BUDGET.labels(s.service).set(s.budget)
    metrics.DB_SERVER_CONNECTIONS.labels("other").set(audit.other)
    metrics.DB_CONNECTION_ALLOCATION.set(audit.allocation)
