"""``/api/v1/admin`` (admin role): the connection audit and table sizes, Tavily keys (write-only, listed
masked), and erasing an owner's roadmaps."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response, status
from sqlalchemy.exc import IntegrityError

from app.api.deps import AdminUser, SessionDep
from app.api.routes import API_V1
from app.api.routes.roadmaps import erase, in_progress
from app.budget.audit import publish, run_audit
from app.config.settings import get_settings
from app.messaging import retention
from app.repositories.tavily_keys import TavilyKeyRepository
from app.schemas.errors import AUTH, BAD_BODY, CONFLICT, NOT_FOUND, ROADMAP_IN_PROGRESS, UNAVAILABLE
from app.schemas.roadmaps import RoadmapErasure
from app.schemas.tavily_keys import TavilyKeyCreate, TavilyKeyOut
from app.tools.search.web_search_router import WebSearchRouter

router = APIRouter(prefix=f"{API_V1}/admin", tags=["admin"], responses={**AUTH, **UNAVAILABLE})


@router.get("/connections")
async def connections(session: SessionDep, _admin: AdminUser) -> dict[str, Any]:
    """The live audit of pg_stat_activity: this environment's connections by service, each against its
    budget, and the whole instance's; and ``storage``: the size and oldest row of each table that grows
    with use (checkpoint tables, task_logs, outbox). Also refreshes both sets of Prometheus gauges."""
    audit = await run_audit(session, get_settings())
    publish(audit)
    tables = await retention.storage(await session.connection(), checkpoint_age=True)
    retention.publish_storage(tables)
    return {**audit.as_dict(), "storage": tables}


# What an owner's name may be: the owner column's width, visible characters.
Owner = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


@router.delete("/owners/{owner}/roadmaps", response_model=RoadmapErasure, responses=ROADMAP_IN_PROGRESS)
async def erase_owner(owner: Owner, _admin: AdminUser) -> RoadmapErasure | Response:
    """Every roadmap of ``owner``, with all that is theirs (see DELETE /api/v1/roadmaps/{id}); nothing
    when one of them is still in progress (409). ``deleted`` is 0 when there is nothing (left) to erase."""
    deletion = await erase(owner)
    if deletion.running:
        return in_progress(
            f"{len(deletion.running)} of the owner's roadmaps are still in progress; nothing was deleted"
        )
    return RoadmapErasure(owner=owner, deleted=len(deletion.deleted))


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
