"""Validate a pooled connection at checkout only when it has been idle: pre-ping's safety, not its price.

``pool_pre_ping`` costs asyncpg three round trips on *every* checkout. Like HikariCP's
``aliveBypassWindowMs``, a connection returned less than ``DB_POOL_PING_IDLE_SECONDS`` ago is handed
out as is; an older one gets one ``;`` and, if that fails, ``DisconnectionError`` makes the pool
replace it (SQLAlchemy's pessimistic recipe).
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
