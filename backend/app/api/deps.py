"""Dependencies shared by the routes: the database session and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.security import AuthError, Principal, verify_token
from app.db.session import get_db_session

# scope="function": the session commits and returns its connection when the endpoint returns, *before*
# the response is sent. A commit that fails (the server went away) then becomes a 503 through the
# error handlers, instead of an exception after the response started and a dropped connection.
SessionDep = Annotated[AsyncSession, Depends(get_db_session, scope="function")]

_bearer = HTTPBearer(auto_error=False)


def _principal(credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return verify_token(credentials.credentials)
    except AuthError as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}
        ) from None


# Both are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in its
# thread pool, and a thread hop on every authenticated request cost the read path about a quarter of
# its throughput (bench_request_path.py). Verifying an HS256 token takes microseconds: the loop can.
# Each depends on the bearer scheme itself rather than one on the other: a level of dependencies is
# solved, cached and scope-checked by FastAPI on every request.
async def current_user(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    return _principal(credentials)


async def admin_user(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    user = _principal(credentials)
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the admin role is required")
    return user


CurrentUser = Annotated[Principal, Depends(current_user)]
AdminUser = Annotated[Principal, Depends(admin_user)]
