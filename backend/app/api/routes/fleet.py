"""``/admin/fleet``: a live page of what every service holds, for an admin.

The page is one HTML file with its own small script (no external asset, nothing to build): it reads
``/admin/fleet/data`` every 2 s and draws the table and a 10-minute chart as SVG. A browser proves it
is an admin once: the token given as ``#token=...`` (a fragment never reaches a server log) or pasted
into the form is posted to ``/admin/fleet/session``, which answers with an HttpOnly, SameSite=Strict
cookie for ``/admin`` holding that same token, checked like a bearer token on every request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse

from app.api import fleet
from app.api.deps import SessionDep
from app.config.settings import get_settings
from app.core.security import AuthError, Principal, verify_token

router = APIRouter(prefix="/admin/fleet", tags=["admin"], include_in_schema=False)

COOKIE = "fleet_token"
PAGE = (Path(__file__).resolve().parents[1] / "fleet.html").read_text(encoding="utf-8")


def _admin(token: str | None) -> Principal:
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "an admin token is required")
    try:
        principal = verify_token(token)
    except AuthError as error:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(error)) from None
    if principal.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the admin role is required")
    return principal


async def page_admin(request: Request) -> Principal:
    """An admin by bearer token or by the page's cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return _admin(token if scheme.lower() == "bearer" else request.cookies.get(COOKIE))


PageAdmin = Annotated[Principal, Depends(page_admin)]


@router.get("", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    # The page holds no data: it asks /admin/fleet/data, which requires an admin.
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


@router.post("/session")
async def session(request: Request, token: Annotated[str, Body(embed=True, max_length=4096)]) -> JSONResponse:
    principal = _admin(token)
    response = JSONResponse({"subject": principal.subject})
    # Secure whenever the browser spoke https (to us, or to the edge in front: X-Forwarded-Proto).
    https = request.headers.get("x-forwarded-proto", request.url.scheme) == "https"
    response.set_cookie(
        COOKIE, token, max_age=get_settings().JWT_EXPIRE_MINUTES * 60, path="/admin",
        httponly=True, samesite="strict", secure=https,
    )  # fmt: skip
    return response


@router.get("/data")
async def data(db: SessionDep, _admin: PageAdmin) -> dict[str, Any]:
    return await fleet.current(db, get_settings())
