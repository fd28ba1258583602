"""Bearer tokens for requests to the API under test."""

from __future__ import annotations


def auth(role: str = "user", subject: str = "tester") -> dict[str, str]:
    """Signed with the session's JWT_SECRET_KEY (the app's own create_token), so the API accepts it."""
    from app.core.security import create_token

    return {"Authorization": f"Bearer {create_token(subject, role)}"}  # type: ignore[arg-type]
