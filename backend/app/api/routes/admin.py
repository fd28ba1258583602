"""``/api/v1/admin`` (admin role): the connection audit, and Tavily keys (write-only, listed masked)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, status
from sqlalchemy.exc import IntegrityError

from app.api.deps import AdminUser, SessionDep
from app.api.routes import API_V1
from app.budget.audit import publish, run_audit
from app.config.settings import get_settings
from app.repositories.tavily_keys import TavilyKeyRepository
from app.schemas.errors import AUTH, BAD_BODY, CONFLICT, NOT_FOUND, UNAVAILABLE
from app.schemas.tavily_keys import TavilyKeyCreate, TavilyKeyOut
from app.tools.search.web_search_router import WebSearchRouter

router = APIRouter(prefix=f"{API_V1}/admin", tags=["admin"], responses={**AUTH, **UNAVAILABLE})


@router.get("/connections")
async def connections(session: SessionDep, _admin: AdminUser) -> dict[str, Any]:
    """The live audit of pg_stat_activity: this environment's connections by service, each against its
    budget, and the whole instance's. Also refreshes the audit's Prometheus gauges."""
    audit = await run_audit(session, get_settings())
    publish(audit)
    return audit.as_dict()


@router.get("/tavily-keys", response_model=list[TavilyKeyOut])
async def list_keys(session: SessionDep, _admin: AdminUser) -> list[TavilyKeyOut]:
    return [TavilyKeyOut.model_validate(k) for k in await TavilyKeyRepository(session).list()]


@router.post(
    "/tavily-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=TavilyKeyOut,
    responses={**CONFLICT, **BAD_BODY},
)
async def add_key(body: TavilyKeyCreate, session: SessionDep, _admin: AdminUser) -> TavilyKeyOut:
    try:
        async with session.begin_nested():
            key = await TavilyKeyRepository(session).add(
                body.api_key.get_secret_value(), body.remaining_credits
            )
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, "this api_key is already stored") from None
    await session.refresh(key)
    out = TavilyKeyOut.model_validate(key)
    await WebSearchRouter().invalidate()  # availability may have changed: do not wait for the TTL
    return out


@router.post("/tavily-keys/{key_id}/disable", response_model=TavilyKeyOut, responses=NOT_FOUND)
async def disable_key(
    key_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep, _admin: AdminUser
) -> TavilyKeyOut:
    key = await TavilyKeyRepository(session).set_status(key_id, "disabled")
    if key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"tavily key {key_id} not found")
    await session.refresh(key)
    out = TavilyKeyOut.model_validate(key)
    await WebSearchRouter().invalidate()
    return out
