"""The request path's reads: Core statements compiled once, executed by the pooled connection's asyncpg.

SQLAlchemy's execution (cache lookup, execution context, result wrapping) cost the API's hot reads more
CPU than asyncpg itself: 10% of a task-log read's samples under py-spy, the largest share that was ours
(docs/benchmarks.md, "The request path"). So only execution moves: the statements stay SQLAlchemy Core,
compiled once at import into asyncpg's ``$n`` form (``DriverStatement``), and the connection is still
checked out of SQLAlchemy's pool (``app.db.session.read``), so the pool's events, metrics, leak
detection, idle ping, checkout deadline and gate are all unchanged.

A failure is handed to SQLAlchemy's own handling for that connection, so a read fails exactly as if
SQLAlchemy had executed it: the same ``DBAPIError`` types (which the API maps to 503s), the same
disconnect detection (a dead connection is invalidated, with every pooled connection older than it, and
``read()`` retries on a fresh one) and the engine's ``handle_error`` hooks (a ``command_timeout`` discards
this connection only). That handling is ``Connection._handle_dbapi_exception``, private to SQLAlchemy;
the version is pinned (uv.lock) and tests/test_deadlines.py and tests/test_faults.py drive each path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import asyncpg
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql import Executable, Select

_DIALECT = asyncpg_dialect()


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A statement as asyncpg runs it: its SQL with ``$n`` placeholders, and the bind names in order."""

    sql: str
    names: tuple[str, ...]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


def driver_statement(statement: Executable) -> DriverStatement:
    """Compile ``statement`` once for asyncpg. Refused when a parameter or column needs SQLAlchemy's
    type processing, which asyncpg's execution would skip: such a read stays on SQLAlchemy's path."""
    compiled = statement.compile(dialect=_DIALECT)
    types = [bind.type for bind in compiled.binds.values()]
    processed = [t for t in types if t.dialect_impl(_DIALECT).bind_processor(_DIALECT) is not None]
    if isinstance(statement, Select):
        columns = [c.type for c in statement.selected_columns]
        processed += [t for t in columns if t.dialect_impl(_DIALECT).result_processor(_DIALECT, None)]
    if processed:
        raise TypeError(f"types {processed} need SQLAlchemy's processing; run this read through SQLAlchemy")
    return DriverStatement(str(compiled), tuple(compiled.positiontup or ()))


class Reader:
    """One checked-out connection, for ``read()``'s query: rows or a single value of a DriverStatement.

    Never in a transaction (each statement commits by itself, one round trip), except behind PgBouncer
    in transaction mode, where a statement's parse and execute must share one to reach the same server
    connection."""

    __slots__ = ("_connection", "_driver", "_transactional")

    def __init__(self, connection: Connection, driver: asyncpg.Connection, *, transactional: bool) -> None:
        self._connection = connection
        self._driver = driver
        self._transactional = transactional

    @classmethod
    def on(cls, connection: Connection, *, transactional: bool) -> Reader:
        """``connection`` as ``read()`` checked it out: its pooled connection is already there, so
        ``Connection.connection`` does no I/O."""
        return cls(connection, connection.connection.driver_connection, transactional=transactional)

    async def rows(self, statement: DriverStatement, params: Mapping[str, Any]) -> list[asyncpg.Record]:
        return await self._run(self._driver.fetch, statement, params)

    async def value(self, statement: DriverStatement, params: Mapping[str, Any]) -> Any:
        return await self._run(self._driver.fetchval, statement, params)

    async def _run(
        self, method: Callable[..., Awaitable[Any]], statement: DriverStatement, params: Mapping[str, Any]
    ) -> Any:
        try:
            if self._transactional:
                async with self._driver.transaction():
                    return await method(statement.sql, *statement.arguments(params))
            return await method(statement.sql, *statement.arguments(params))
        except BaseException as error:  # noqa: BLE001 (re-raised, as SQLAlchemy would raise it)
            _raise_as_sqlalchemy(self._connection, error)


def _raise_as_sqlalchemy(connection: Connection, error: BaseException) -> NoReturn:
    """Raise what SQLAlchemy's execution would have raised for ``error``, with its side effects."""
    adapted = connection.connection.dbapi_connection
    try:
        # The DB-API form of an asyncpg error (what SQLAlchemy's cursor raises); others as they are.
        if isinstance(error, Exception) and adapted is not None:
            adapted._handle_exception(error)  # type: ignore[attr-defined]
        raise error
    except BaseException as dbapi_error:  # noqa: BLE001 (re-raised by SQLAlchemy's handling)
        # No statement: then, as for SQLAlchemy's own execution, only DB-API errors are wrapped, and a
        # TimeoutError or a cancellation travels on as itself.
        connection._handle_dbapi_exception(dbapi_error, None, None, None, None)
