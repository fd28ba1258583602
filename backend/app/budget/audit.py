"""The live audit: what pg_stat_activity shows, charged to this environment and to the whole instance.

An environment is charged only with the connections **to its own database** (``current_database()``
of the audit's connection). Within it, services are recognised by ``application_name =
<environment>.<service>`` (SQLAlchemy pools) and ``<environment>.<service>.langgraph`` (checkpointer
pools); anything else there (psql, monitoring, migrations) is "other" and set against the admin reserve.
Connections to other databases, such as another environment sharing the instance, are listed under
"elsewhere" and never charged here.

The instance view sets every known environment's allocation against what its connections use, and
their sum against the server's own ``max_connections`` (the guide's 120 + 280 = 400).

The cap in force on the server (``pg_database.datconnlimit`` of this database, ``pg_roles.rolconnlimit``
of the audit's role, -1 for none) is set against the one this environment expects (allocation less
admin reserve, ``app.db.connection_cap``); a mismatch fails the audit when ``DB_CONNECTION_CAP`` asks
for a cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.budget.model import ServerLimits, budget_from_settings
from app.config.settings import PROFILES, Settings
from app.core import metrics
from app.core.orchestrator_factory import checkpointer_service
from app.db.connection_cap import CAP_IN_FORCE, CapInForce, cap_matches, expected_cap

# The guide's grouping, over the whole server (every database), so other databases can be shown too.
BY_CLIENT = """
SELECT datname, usename, application_name, client_addr::text AS client_addr, state, count(*) AS n
FROM pg_stat_activity
WHERE datname IS NOT NULL
GROUP BY datname, usename, application_name, client_addr, state
ORDER BY n DESC
"""
DATABASE = "SELECT current_database()"
SERVER_TOTAL = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
# The same as SHOW max_connections / SHOW superuser_reserved_connections, in one round trip;
# reserved_connections exists from PostgreSQL 16 (missing_ok: NULL before).
SERVER_LIMITS = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int
"""


def server_limits_from_row(row: Any) -> ServerLimits:
    return ServerLimits(int(row[0]), int(row[1]), int(row[2]))


@cache
def _profile_allocation(environment: str) -> int:
    return Settings.from_mapping({"ENVIRONMENT": environment}).DB_CONNECTION_BUDGET


def known_allocations(settings: Settings) -> dict[str, int]:
    """Every environment this code knows of (its profiles, and this one), with its allocation.

    This environment's comes from its own settings; another's from its profile, since this process
    cannot see the other's variables.
    """
    allocations = {name: _profile_allocation(name) for name in PROFILES}
    allocations[settings.ENVIRONMENT] = settings.DB_CONNECTION_BUDGET
    return allocations


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
class EnvironmentUse:
    environment: str
    allocation: int
    used: int  # connections named <environment>.*, on any database


@dataclass
class Audit:
    environment: str
    database: str
    allocation: int
    admin_reserve: int
    services: list[ServiceAudit]
    other: int  # to this database, not one of this environment's services
    elsewhere: list[dict[str, Any]]  # datname, application_name, count: other databases
    environments: list[EnvironmentUse]
    server_total: int
    server: ServerLimits
    rows: list[dict[str, Any]]
    cap: CapInForce
    cap_scope: str  # DB_CONNECTION_CAP
    cap_expected: int
    cap_matches: bool

    @property
    def charged(self) -> int:
        """Every connection to this environment's database."""
        return sum(s.total for s in self.services) + self.other

    @property
    def over_budget(self) -> list[str]:
        return [s.service for s in self.services if not s.within_budget]

    @property
    def ok(self) -> bool:
        capped = self.cap_matches or self.cap_scope == "off"
        return not self.over_budget and self.charged <= self.allocation and capped

    @property
    def allocations_total(self) -> int:
        return sum(e.allocation for e in self.environments)

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "database": self.database,
            "allocation": self.allocation,
            "admin_reserve": self.admin_reserve,
            "charged": self.charged,
            "within_allocation": self.charged <= self.allocation,
            "other": self.other,
            "services": [
                {
                    "service": s.service,
                    "sqlalchemy": s.sqlalchemy,
                    "langgraph": s.langgraph,
                    "total": s.total,
                    "budget": s.budget,
                    "within_budget": s.within_budget,
                }
                for s in self.services
            ],
            "elsewhere": self.elsewhere,
            "environments": [
                {"environment": e.environment, "allocation": e.allocation, "used": e.used}
                for e in self.environments
            ],
            "allocations_total": self.allocations_total,
            "server_total": self.server_total,
            "max_connections": self.server.max_connections,
            "superuser_reserved_connections": self.server.superuser_reserved_connections,
            "usable_connections": self.server.usable,
            "connections": self.rows,
            "connection_cap": {
                "scope": self.cap_scope,
                "expected": self.cap_expected,
                "database_limit": self.cap.database_limit,
                "role": self.cap.role,
                "role_limit": self.cap.role_limit,
                "role_superuser": self.cap.superuser,
                "matches": self.cap_matches,
            },
        }


async def run_audit(conn: AsyncSession | AsyncConnection, settings: Settings) -> Audit:
    budget = budget_from_settings(settings)
    rows = [dict(r._mapping) for r in (await conn.execute(text(BY_CLIENT))).all()]
    database = str(await conn.scalar(text(DATABASE)))
    server_total = int(await conn.scalar(text(SERVER_TOTAL)) or 0)
    server = server_limits_from_row((await conn.execute(text(SERVER_LIMITS))).one())
    cap = CapInForce.from_row((await conn.execute(text(CAP_IN_FORCE))).one())

    here: dict[str, int] = {}
    elsewhere: dict[tuple[str, str], int] = {}
    by_name: dict[str, int] = {}
    for row in rows:
        name, count = row["application_name"] or "", int(row["n"])
        by_name[name] = by_name.get(name, 0) + count
        if row["datname"] == database:
            here[name] = here.get(name, 0) + count
        else:
            key = (row["datname"], name)
            elsewhere[key] = elsewhere.get(key, 0) + count

    prefix = f"{settings.ENVIRONMENT}."
    services, known = [], set()
    for s in budget.services:
        plain, graph = prefix + s.name, prefix + checkpointer_service(s.name)
        known |= {plain, graph}
        services.append(ServiceAudit(s.name, here.get(plain, 0), here.get(graph, 0), s.max_connections))
    environments = [
        EnvironmentUse(name, allocation, sum(n for app, n in by_name.items() if app.startswith(f"{name}.")))
        for name, allocation in known_allocations(settings).items()
    ]
    return Audit(
        environment=settings.ENVIRONMENT,
        database=database,
        allocation=budget.allocation,
        admin_reserve=budget.admin_reserve,
        services=services,
        other=sum(n for name, n in here.items() if name not in known),
        elsewhere=[
            {"datname": datname, "application_name": name, "count": n}
            for (datname, name), n in sorted(elsewhere.items(), key=lambda item: -item[1])
        ],
        environments=environments,
        server_total=server_total,
        server=server,
        rows=rows,
        cap=cap,
        cap_scope=settings.DB_CONNECTION_CAP,
        cap_expected=expected_cap(settings),
        cap_matches=cap_matches(cap, settings),
    )


def publish(audit: Audit) -> None:
    """Server-side counts as Prometheus gauges: alerts fire on what the server sees, not on pools.

    Every series carries ``environment``, so one Prometheus watching several environments on one
    instance never adds one environment's connections to another's allocation.
    """
    env = audit.environment
    for s in audit.services:
        metrics.DB_SERVER_CONNECTIONS.labels(env, s.service).set(s.total)
        metrics.DB_CONNECTION_SERVICE_BUDGET.labels(env, s.service).set(s.budget)
    metrics.DB_SERVER_CONNECTIONS.labels(env, "other").set(audit.other)
    metrics.DB_CONNECTION_ALLOCATION.labels(env).set(audit.allocation)
    for e in audit.environments:
        metrics.DB_INSTANCE_CONNECTIONS.labels(e.environment).set(e.used)
        metrics.DB_INSTANCE_ALLOCATION.labels(e.environment).set(e.allocation)
    metrics.DB_SERVER_MAX_CONNECTIONS.set(audit.server.max_connections)
    metrics.DB_SERVER_RESERVED_CONNECTIONS.set(
        audit.server.superuser_reserved_connections + audit.server.reserved_connections
    )
