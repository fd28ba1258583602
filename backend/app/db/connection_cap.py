"""The allocation as a cap the server enforces: ``ALTER DATABASE | ROLE ... CONNECTION LIMIT``.

Every process limits itself (its pool sizes, the budget guard), but environments sharing one server
(development 120 and production 280 of 400) are kept apart only if the server refuses the connections
beyond each one's share: a development pool tripled by mistake then meets "too many connections for
database" itself, instead of taking production's slots. The cap is the allocation less the admin
reserve (``DB_CONNECTION_BUDGET - DB_ADMIN_RESERVE``: 260 and 110), the same figure PgBouncer's
``max_db_connections`` gets; administrators connect as a superuser, which no CONNECTION LIMIT binds.

``DB_CONNECTION_CAP`` says what is capped: ``database`` (``current_database()``), ``database_and_role``
(``current_user`` too, where each environment has a role of its own) or ``off``. Applied by the prestart
step before every deploy and by ``python -m app.budget --apply-cap [--dry-run]``; only the limits that
differ are altered, so running it again changes nothing. Lowering a limit ends no session: it refuses
new ones until the count is below it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from app.config.settings import Settings
from app.db.engine import direct_connection

# Both limits in force (-1: none) and whether the app's role is a superuser (exempt from both).
CAP_IN_FORCE = """
SELECT current_database() AS database, current_user AS role, d.datconnlimit, r.rolconnlimit, r.rolsuper
FROM pg_database d, pg_roles r
WHERE d.datname = current_database() AND r.rolname = current_user
"""

Target = Literal["database", "role"]


@dataclass(frozen=True)
class CapInForce:
    database: str
    role: str
    database_limit: int  # pg_database.datconnlimit, -1: none
    role_limit: int  # pg_roles.rolconnlimit, -1: none
    superuser: bool

    @classmethod
    def from_row(cls, row: Any) -> CapInForce:
        return cls(str(row[0]), str(row[1]), int(row[2]), int(row[3]), bool(row[4]))

    def limit(self, target: Target) -> int:
        return self.database_limit if target == "database" else self.role_limit


@dataclass(frozen=True)
class CapChange:
    target: Target
    name: str
    before: int
    after: int
    statement: str  # the SQL, identifiers quoted, as an administrator would paste it


def expected_cap(settings: Settings) -> int:
    """The allocation less the admin reserve (what ``python -m app.budget --pgbouncer`` gives PgBouncer)."""
    return settings.DB_CONNECTION_BUDGET - settings.DB_ADMIN_RESERVE


def targets(settings: Settings) -> tuple[Target, ...]:
    return {"off": (), "database": ("database",), "database_and_role": ("database", "role")}[
        settings.DB_CONNECTION_CAP
    ]


def cap_matches(in_force: CapInForce, settings: Settings) -> bool:
    """Whether the server enforces the expected cap on every target ``DB_CONNECTION_CAP`` names (the
    database alone when it is off: the audit still says whether this environment is capped)."""
    return all(in_force.limit(t) == expected_cap(settings) for t in targets(settings) or ("database",))


def read_cap(conn: psycopg.Connection[Any]) -> CapInForce:
    return CapInForce.from_row(conn.execute(CAP_IN_FORCE).fetchone())


def plan(conn: psycopg.Connection[Any], settings: Settings, in_force: CapInForce) -> list[CapChange]:
    """The statements that would bring each target's limit to the expected cap (none already there)."""
    cap = expected_cap(settings)
    changes = []
    for target in targets(settings):
        if in_force.limit(target) == cap:
            continue
        name = in_force.database if target == "database" else in_force.role
        statement = sql.SQL("ALTER {} {} CONNECTION LIMIT {}").format(
            sql.SQL(target.upper()), sql.Identifier(name), sql.Literal(cap)
        )
        changes.append(CapChange(target, name, in_force.limit(target), cap, statement.as_string(conn)))
    return changes


class CapNotPermitted(SystemExit):
    """The role may not alter a limit: one line with the SQL an administrator should run."""


def not_permitted(in_force: CapInForce, pending: list[CapChange]) -> CapNotPermitted:
    statements = " ".join(f"{c.statement};" for c in pending)
    return CapNotPermitted(
        f"role {in_force.role} may not set these connection limits (ALTER DATABASE needs the database's "
        f"owner, ALTER ROLE CREATEROLE, or a superuser); an administrator should run: {statements}"
    )


def apply(conn: psycopg.Connection[Any], settings: Settings) -> tuple[CapInForce, list[CapChange]]:
    """Alter what differs, on an autocommit connection; the limits found before, and what changed."""
    in_force = read_cap(conn)
    changes = plan(conn, settings, in_force)
    for done, change in enumerate(changes):
        try:
            conn.execute(change.statement)
        except psycopg.errors.InsufficientPrivilege:
            raise not_permitted(in_force, changes[done:]) from None
    return in_force, changes


def superuser_warning(in_force: CapInForce) -> str:
    return (
        f"warning: role {in_force.role} is a superuser, and PostgreSQL exempts superusers from both "
        "CONNECTION LIMITs: the cap does not bind this role's connections; run the services as an "
        "ordinary role"
    )


def _none(limit: int) -> str:
    return "none" if limit < 0 else str(limit)


def command(settings: Settings, *, dry_run: bool) -> int:
    """``python -m app.budget --apply-cap [--dry-run]``: exit 0 when the cap is in force (or would be)."""
    cap = expected_cap(settings)
    header = (
        f"-- {settings.ENVIRONMENT}: allocation {settings.DB_CONNECTION_BUDGET} - admin reserve "
        f"{settings.DB_ADMIN_RESERVE} = cap {cap} (DB_CONNECTION_CAP={settings.DB_CONNECTION_CAP})"
    )
    if settings.DB_BEHIND_PGBOUNCER:
        # Through PgBouncer the ALTER would reach PostgreSQL, but PgBouncer's own cap is what holds there.
        print(header)
        print(
            f"-- behind PgBouncer (DB_BEHIND_PGBOUNCER=true): the cap is PgBouncer's max_db_connections = "
            f"{cap} (python -m app.budget --pgbouncer); nothing altered. To cap PostgreSQL too, run this "
            "with DATABASE_URL pointing at the server and DB_BEHIND_PGBOUNCER=false."
        )
        return 0
    if settings.DB_CONNECTION_CAP == "off":
        print(
            "DB_CONNECTION_CAP is off: nothing to apply; set it to database (or database_and_role where "
            "this environment has a role of its own)",
            file=sys.stderr,
        )
        return 1
    try:
        with direct_connection(settings, "cap") as conn:
            if dry_run:
                in_force = read_cap(conn)
                changes = plan(conn, settings, in_force)
            else:
                in_force, changes = apply(conn, settings)
    except CapNotPermitted as refused:
        print(refused, file=sys.stderr)
        return 1
    except psycopg.OperationalError as error:
        # libpq's message names host, port, role and database, never the password.
        print(f"cannot reach the database to apply the cap: {error}".replace("\n", " "), file=sys.stderr)
        return 1
    print(header + (" -- dry run, nothing altered" if dry_run else ""))
    for change in changes:
        print(f"{change.statement};  -- was {_none(change.before)}")
    unchanged = [t for t in targets(settings) if t not in {c.target for c in changes}]
    for target in unchanged:
        name = in_force.database if target == "database" else in_force.role
        print(f"-- {target} {name}: CONNECTION LIMIT {cap} already in force")
    if in_force.superuser:
        print(superuser_warning(in_force), file=sys.stderr)
    return 0
