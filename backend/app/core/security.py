"""Bearer tokens: JWTs signed with JWT_SECRET_KEY, carrying a subject and a role (user or admin).

python -m app.core.security --sub alice --role admin     # prints a token for local use
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import jwt

from app.config.settings import Settings, get_settings

Role = Literal["user", "admin"]


class AuthError(Exception):
    """Why a request is not authenticated; the message is safe to show to the client."""


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role


def create_token(subject: str, role: Role = "user", *, settings: Settings | None = None,
                 expires_minutes: int | None = None) -> str:  # fmt: skip
    settings = settings or get_settings()
    secret = settings.JWT_SECRET_KEY.get_secret_value()
    if not secret:
        raise AuthError("JWT_SECRET_KEY is not set")
    now = datetime.now(UTC)
    claims = {
        "sub": subject,
        "role": role,
        "iat": now,
        "exp": now + timedelta(minutes=expires_minutes or settings.JWT_EXPIRE_MINUTES),
    }
    return jwt.encode(claims, secret, algorithm=settings.JWT_ALGORITHM)


def verify_token(token: str, settings: Settings | None = None) -> Principal:
    settings = settings or get_settings()
    secret = settings.JWT_SECRET_KEY.get_secret_value()
    if not secret:
        raise AuthError("authentication is not configured on this server (JWT_SECRET_KEY)")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[settings.JWT_ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError:
        raise AuthError("invalid token") from None
    role = claims.get("role", "user")
    if role not in ("user", "admin"):
        raise AuthError("invalid token role")
    return Principal(subject=str(claims["sub"]), role=role)


def main() -> None:
    parser = argparse.ArgumentParser(description="Print a bearer token signed with JWT_SECRET_KEY.")
    parser.add_argument("--sub", required=True)
    parser.add_argument("--role", choices=["user", "admin"], default="user")
    parser.add_argument("--minutes", type=int, default=None)
    args = parser.parse_args()
    print(create_token(args.sub, args.role, expires_minutes=args.minutes))


if __name__ == "__main__":
    main()
