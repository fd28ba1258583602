"""Bearer tokens: JWTs signed with JWT_SECRET_KEY, carrying a subject and a role (user or admin).

python -m app.core.security --sub alice --role admin     # prints a token for local use
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal

import jwt

from app.config.settings import Settings, get_settings

Role = Literal["user", "admin"]

# The subject becomes roadmaps.owner, a varchar(200): a longer one, or one PostgreSQL cannot store
# (NUL) or that would forge log lines (control characters), is refused at the door with a 401 instead
# of failing as a database error after the request was accepted.
SUBJECT_MAX_LENGTH = 200


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
    minutes = expires_minutes or settings.JWT_EXPIRE_MINUTES
    if minutes > settings.JWT_MAX_LIFETIME_MINUTES:
        # verify_token would refuse it: better to say so now than to hand out a token that never works.
        raise AuthError(f"tokens live at most JWT_MAX_LIFETIME_MINUTES={settings.JWT_MAX_LIFETIME_MINUTES}")
    now = datetime.now(UTC)
    claims = {"sub": subject, "role": role, "iat": now, "exp": now + timedelta(minutes=minutes)}
    return jwt.encode(claims, secret, algorithm=settings.JWT_ALGORITHM)


def verify_token(token: str, settings: Settings | None = None) -> Principal:
    settings = settings or get_settings()
    secret = settings.JWT_SECRET_KEY.get_secret_value()
    if not secret:
        raise AuthError("authentication is not configured on this server (JWT_SECRET_KEY)")
    principal, exp = _verified(token, secret, settings.JWT_ALGORITHM, settings.JWT_MAX_LIFETIME_MINUTES)
    if exp <= time.time():  # a remembered token is still checked for expiry on every use
        raise AuthError("token expired")
    return principal


# A client sends the same token with every request: its signature and claims are checked once, then
# remembered (by the token and the key that signed it), and only its expiry is checked again, since
# decoding is a real share of a read's CPU. Refused tokens are not remembered.
@lru_cache(maxsize=4096)
def _verified(token: str, secret: str, algorithm: str, max_lifetime_minutes: int) -> tuple[Principal, float]:
    try:
        # iat is required so that a token's lifetime can be bounded; PyJWT refuses an iat in the future.
        claims = jwt.decode(token, secret, algorithms=[algorithm], options={"require": ["sub", "exp", "iat"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except (jwt.InvalidTokenError, ValueError, TypeError, OverflowError):
        # PyJWT converts numeric claims itself; a value it cannot (1e400) is as invalid as a bad signature.
        raise AuthError("invalid token") from None
    # A validly signed token that never expires (exp = 1e30) is a leaked password: refuse any token
    # minted for longer than the maximum, and any whose remaining life exceeds it (iat in the past).
    max_seconds = max_lifetime_minutes * 60
    # PyJWT has checked both are numbers (inf and NaN are refused as non-integers).
    exp, iat = claims["exp"], claims["iat"]
    if exp - iat > max_seconds or exp - time.time() > max_seconds:
        raise AuthError(f"token lifetime exceeds {max_lifetime_minutes} minutes")
    role = claims.get("role", "user")
    if role not in ("user", "admin"):
        raise AuthError("invalid token role")
    subject = claims["sub"]  # PyJWT has checked that it is a string
    if not subject_is_valid(subject):
        raise AuthError(f"invalid token subject ({SUBJECT_RULE})")
    return Principal(subject=subject, role=role), float(exp)


SUBJECT_RULE = f"1 to {SUBJECT_MAX_LENGTH} printable characters, not blank, no surrounding spaces"


def subject_is_valid(subject: str) -> bool:
    """A subject is an owner: "   " or " alice" would be an owner nobody meant (or a second alice)."""
    return 1 <= len(subject) <= SUBJECT_MAX_LENGTH and subject.isprintable() and subject.strip() == subject


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a bearer token signed with JWT_SECRET_KEY.")
    parser.add_argument("--sub", required=True)
    parser.add_argument("--role", choices=["user", "admin"], default="user")
    parser.add_argument("--minutes", type=int, default=None)
    args = parser.parse_args(argv)
    if not subject_is_valid(args.sub):
        parser.error(f"--sub {args.sub!r}: {SUBJECT_RULE}")
    settings = get_settings()  # an invalid setting stops here with its own one line
    if not settings.JWT_SECRET_KEY.get_secret_value():
        print(
            "JWT_SECRET_KEY is not set: export it (32+ characters), or name an env file that sets it, "
            "e.g. ENV_FILE=.env.development (created by ./scripts/dev.sh)",
            file=sys.stderr,
        )
        return 2
    try:
        print(create_token(args.sub, args.role, settings=settings, expires_minutes=args.minutes))
    except AuthError as error:
        print(f"cannot mint a token: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
