"""Validate a pooled connection at checkout only when it has been idle: pre-ping's safety, not its price.

SQLAlchemy's ``pool_pre_ping`` pings on *every* checkout, and for asyncpg outside autocommit that ping
is three round trips (BEGIN, ``;``, ROLLBACK): under load it cost more than the query it protected.
Like HikariCP's ``aliveBypassWindowMs`` (500 ms), a connection returned to the pool less than
``DB_POOL_PING_IDLE_SECONDS`` ago was alive a moment ago and is handed out as is; an older one gets one
round trip (``;`` in the simple-query protocol: no prepared statement, so safe behind PgBouncer in
transaction mode) and, if that fails, is replaced through SQLAlchemy's documented pessimistic
mechanism: raising ``DisconnectionError`` from a ``checkout`` listener makes the pool discard the
connection and check out another (up to three times).

A connection that dies inside the window (a server restart, ``pg_terminate_backend``) fails its first
statement instead; SQLAlchemy then invalidates every connection of the pool opened before that moment,
and reads are retried once on a fresh connection (``app.db.session.read``), so a client sees no error.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

_RETURNED_AT = "returned_at"


def install_idle_ping(engine: AsyncEngine, idle_seconds: float, timeout: float) -> None:
    """``timeout`` bounds the ping: a NAT that silently drops a connection's packets would otherwise hold
    the checkout until TCP gives up, minutes later."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _validate(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)
        if returned is None or time.monotonic() - returned < idle_seconds:
            return  # just opened, or in use a moment ago
        try:
            await_only(dbapi_connection.driver_connection.execute(";", timeout=timeout))
        except Exception as error:
            idle = time.monotonic() - returned
            raise exc.DisconnectionError(f"a connection idle for {idle:.1f} s is dead") from error
