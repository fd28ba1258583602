"""Tavily API keys: the best key, atomic credit spending, admin operations."""

from __future__ import annotations

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import TavilyApiKey

# One statement picks the key with the most credits and spends one: no window between reading and
# decrementing, so two workers can never both spend a key's last credit (and the CHECK constraint
# remaining_credits >= 0 backs that up).
_RESERVE = """
UPDATE tavily_api_keys
SET remaining_credits = remaining_credits - 1,
    last_used_at = now(),
    status = CASE WHEN remaining_credits - 1 = 0 THEN 'exhausted' ELSE status END
WHERE id = (
    SELECT id FROM tavily_api_keys
    WHERE status = 'active' AND remaining_credits > 0
    ORDER BY remaining_credits DESC, id
    LIMIT 1
    FOR UPDATE {lock}
)
RETURNING id, api_key, remaining_credits
"""


class TavilyKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_best_key(self) -> TavilyApiKey | None:
        """The active key with the most remaining credits (the guide's availability check)."""
        return await self.session.scalar(
            select(TavilyApiKey)
            .where(TavilyApiKey.status == "active", TavilyApiKey.remaining_credits > 0)
            .order_by(TavilyApiKey.remaining_credits.desc(), TavilyApiKey.id)
            .limit(1)
        )

    async def reserve_credit(self) -> tuple[int, str, int] | None:
        """Spend one credit of the best key: (id, key, credits left), or None when none is left.

        SKIP LOCKED first, so concurrent workers spread over keys instead of queueing on one; if every
        candidate is locked, wait once for the best one.
        """
        for lock in ("SKIP LOCKED", ""):
            row = (await self.session.execute(text(_RESERVE.format(lock=lock)))).first()
            if row is not None:
                return int(row.id), str(row.api_key), int(row.remaining_credits)
        return None

    async def add(self, api_key: str, credits: int) -> TavilyApiKey:
        key = TavilyApiKey(api_key=api_key, remaining_credits=credits, status="active")
        self.session.add(key)
        await self.session.flush()
        return key

    async def set_status(self, key_id: int, status: str) -> TavilyApiKey | None:
        key = await self.session.get(TavilyApiKey, key_id)
        if key is not None:
            key.status = status
            await self.session.flush()
        return key

    async def list(self) -> list[TavilyApiKey]:
        return list(await self.session.scalars(select(TavilyApiKey).order_by(TavilyApiKey.id)))

    async def exhaust(self, key_id: int) -> None:
        """The provider said the key has no quota left: stop choosing it."""
        await self.session.execute(
            update(TavilyApiKey).where(TavilyApiKey.id == key_id).values(status="exhausted")
        )
