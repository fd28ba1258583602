"""Tavily API keys: the best key, atomic credit spending, admin operations."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import TavilyApiKey

# One statement picks the key with the most credits and spends ``n`` of them. The subquery takes no
# lock; the UPDATE locks that single row and re-checks ``remaining_credits >= :n`` on the latest version,
# so two workers can never both spend a key's last credit (the CHECK constraint backs that up). When a
# competitor got there first the statement updates nothing and the caller tries again. Locking only one
# row per statement is what keeps this deadlock-free (a FOR UPDATE subquery with ORDER BY ... LIMIT
# can lock a row, find it changed, move on and lock another: two such statements deadlock).
RESERVE_CREDITS = """
UPDATE tavily_api_keys
SET remaining_credits = remaining_credits - :n,
    last_used_at = now(),
    status = CASE WHEN remaining_credits - :n = 0 THEN 'exhausted' ELSE status END
WHERE id = (
    SELECT id FROM tavily_api_keys
    WHERE status = 'active' AND remaining_credits >= :n
    ORDER BY remaining_credits DESC, id
    LIMIT 1
)
AND status = 'active' AND remaining_credits >= :n
RETURNING id, api_key, remaining_credits
"""
_ANY_LEFT = "SELECT EXISTS (SELECT 1 FROM tavily_api_keys WHERE status = 'active' AND remaining_credits > 0)"


class TavilyKeyRepository:
    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    async def get_best_key(self) -> TavilyApiKey | None:
        """The active key with the most remaining credits, None when no key has any: the database's
        answer to WebSearchRouter's availability check."""
        return await self.session.scalar(
            select(TavilyApiKey)
            .where(TavilyApiKey.status == "active", TavilyApiKey.remaining_credits > 0)
            .order_by(TavilyApiKey.remaining_credits.desc(), TavilyApiKey.id)
            .limit(1)
        )

    async def reserve_credit(self, attempts: int = 10, n: int = 1) -> tuple[int, str, int] | None:
        """Spend ``n`` credits of one key, the best that has them: (id, key, credits left), or None
        when no key has ``n`` left."""
        for _ in range(attempts):
            row = (await self.session.execute(text(RESERVE_CREDITS), {"n": n})).first()
            if row is not None:
                return int(row.id), str(row.api_key), int(row.remaining_credits)
            if not await self.session.scalar(text(_ANY_LEFT)):
                return None
            if n > 1:
                return None  # credits are left, but no key has n: the caller spends them one by one
        return None  # lost every race: report "none" rather than spin

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
