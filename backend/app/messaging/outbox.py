"""The transactional outbox: a task is stored with the data that needs it and published after the commit.

Publishing inside a request's transaction tied the request to the broker: with Redis down or stalled a
POST hung for a minute or answered 500, its transaction (and pooled connection) stayed open meanwhile,
and a client that gave up and retried got a duplicate. Here, as Polar flushes its jobs after commit:

* ``stage(session, name, *args)`` adds an ``outbox`` row in the caller's transaction, so the task
  exists exactly when the data it is about does;
* ``publish(messages)`` runs after the commit, gives the broker OUTBOX_PUBLISH_TIMEOUT for the whole
  batch and deletes what it took; what it could not publish stays for the relay;
* ``relay()`` leases the messages left for OUTBOX_RELAY_AFTER_SECONDS (``FOR UPDATE SKIP LOCKED``:
  any number of relays, each message to one of them), publishes them holding no connection, and
  deletes them; a message that fails again is leased for longer each time;
* ``send(name, *args)``: stage in a transaction of its own, then publish; for workers.

Tasks are published by name, so nothing here imports the task modules. Delivery is at least once (a
publish that timed out may still have reached the broker); every task is idempotent in effect, which
makes it exactly once in effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Float, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config.settings import get_settings
from app.core.logging import LogRateLimiter
from app.core.metrics import OUTBOX_PUBLISH_FAILURES, OUTBOX_PUBLISHED
from app.db.errors import is_database_unavailable
from app.db.models import OutboxMessage
from app.db.session import autocommit, safe_session
from app.messaging.send import send_by_name

log = structlog.get_logger("app.outbox")
_OUTBOX = OutboxMessage.__table__
_failures = LogRateLimiter(interval=5.0)
# The longest a message that keeps failing waits between two relay attempts.
_MAX_LEASE_SECONDS = 30


def _seconds(value: Any) -> Any:
    """An interval of ``value`` seconds, computed by the server (its clock is the one that counts)."""
    return func.make_interval(0, 0, 0, 0, 0, 0, func.cast(value, Float))


@dataclass(frozen=True)
class Message:
    id: int
    task_name: str
    args: list[Any]


async def stage(session: AsyncSession, task_name: str, *args: Any) -> Message:
    """Store ``task_name(*args)`` in the session's transaction; publish it after the commit."""
    available = func.now() + _seconds(get_settings().OUTBOX_RELAY_AFTER_SECONDS)
    row_id = await session.scalar(
        insert(_OUTBOX)
        .values(task_name=task_name, args=list(args), available_at=available)
        .returning(_OUTBOX.c.id)
    )
    return Message(int(row_id), task_name, list(args))  # type: ignore[arg-type]


def _send_all(messages: Sequence[Message], sent: list[int]) -> None:
    for message in messages:
        # retry=False: the caller's deadline bounds the attempt; the relay is the retry.
        send_by_name(message.task_name, message.args, retry=False)
        sent.append(message.id)


async def publish(messages: Sequence[Message], *, source: str = "request") -> int:
    """Publish ``messages`` (already committed) within OUTBOX_PUBLISH_TIMEOUT; delete the published ones.

    Never raises: a message that is not published (broker down, slow, or the delete failing) stays in
    the outbox and the relay publishes it. Returns how many the broker took.
    """
    if not messages:
        return 0
    sent: list[int] = []
    try:
        await asyncio.wait_for(
            asyncio.to_thread(_send_all, messages, sent), get_settings().OUTBOX_PUBLISH_TIMEOUT
        )
    except Exception as error:  # noqa: BLE001 - broker down or slow: the relay takes over
        OUTBOX_PUBLISH_FAILURES.labels(source=source).inc()
        if _failures.allow(source):
            log.warning(
                "outbox_publish_deferred", source=source, left=len(messages) - len(sent),
                error=f"{type(error).__name__}: {error}"[:300],
            )  # fmt: skip
    done = list(sent)  # a publish still running past the deadline is the relay's to repeat
    if done:
        OUTBOX_PUBLISHED.labels(source=source).inc(len(done))
        try:
            async with autocommit() as conn:
                await conn.execute(delete(_OUTBOX).where(_OUTBOX.c.id.in_(done)))
        except Exception as error:  # the relay publishes it again: a duplicate, not a loss
            if not is_database_unavailable(error):
                raise
            log.warning("outbox_delete_failed", messages=len(done), error=str(error)[:300])
    return len(done)


async def send(task_name: str, *args: Any) -> None:
    """Stage and publish ``task_name(*args)`` from a worker: stored first, so a broker that is down
    delays it instead of losing it. Raises only when the database is unavailable (the task retries)."""
    async with safe_session() as session:
        message = await stage(session, task_name, *args)
    await publish([message], source="worker")


async def relay(limit: int = 100) -> int:
    """One round: lease up to ``limit`` messages that are due, publish them, delete the published."""
    # The lease grows with each failed attempt (1, 2, 4 ... s, at most _MAX_LEASE), so a broker that
    # stays down costs an attempt per message every half minute, not one per round.
    lease = _seconds(func.least(func.power(2, _OUTBOX.c.attempts), _MAX_LEASE_SECONDS))
    due = (
        select(_OUTBOX.c.id)
        .where(_OUTBOX.c.available_at <= func.now())
        .order_by(_OUTBOX.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .correlate(None)  # its own scan of the outbox, not the UPDATE's row
        .scalar_subquery()
    )
    async with safe_session() as session:
        rows = await session.execute(
            update(_OUTBOX)
            .where(_OUTBOX.c.id.in_(due))
            .values(attempts=_OUTBOX.c.attempts + 1, available_at=func.now() + lease)
            .returning(_OUTBOX.c.id, _OUTBOX.c.task_name, _OUTBOX.c.args)
        )
        messages = [Message(r.id, r.task_name, list(r.args)) for r in rows]
    if not messages:
        return 0
    published = await publish(sorted(messages, key=lambda m: m.id), source="relay")
    log.info("outbox_relayed", leased=len(messages), published=published)
    return published
