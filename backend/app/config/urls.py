"""Pure helpers on PostgreSQL and Redis URLs: driver names, masking, TLS options. They import nothing
from ``app``, so the settings' validators and ``app.config.connections`` can both use them."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

# The drivers a URL may name that each consumer accepts in place of its own. A URL naming any other
# driver is returned as it is.
_ASYNCPG_FROM = frozenset({"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"})
_LIBPQ_FROM = frozenset({"postgres", "postgresql+asyncpg", "postgresql+psycopg"})


def _with_driver(url: str, driver: str, replaced: frozenset[str]) -> str:
    """``url`` naming ``driver`` when SQLAlchemy's parser (the engine's own) reads its driver as one of
    ``replaced``; otherwise ``url`` unchanged.

    Only the driver changes: ``render_as_string`` would re-encode the rest, which libpq reads differently
    (a ``%20`` becomes a raw space it refuses; a ``+`` in a query value stays literal).
    """
    from sqlalchemy.engine import make_url

    current = make_url(url).drivername  # the URL's scheme, exactly as written
    if current not in replaced:
        return url
    return driver + url[len(current) :]


def to_asyncpg_url(url: str) -> str:
    """Accept the ``postgres://`` / ``postgresql://`` forms PaaS hand out; SQLAlchemy needs the driver."""
    return _with_driver(url, "postgresql+asyncpg", _ASYNCPG_FROM)


def to_libpq_url(url: str) -> str:
    """The URL as libpq (psycopg) reads it: ``postgresql://``, without a SQLAlchemy driver."""
    return _with_driver(url, "postgresql", _LIBPQ_FROM)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, safe for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is masked entirely
        return "<unparsable url>"


def url_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password  # type: ignore[return-value]
    except Exception:  # noqa: BLE001
        return None


def redis_cert_reqs(url: str) -> str | None:
    """For a ``rediss://`` URL, its ``ssl_cert_reqs`` (required, optional, none; default required)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    return parse_qs(parts.query).get("ssl_cert_reqs", ["required"])[0].lower().removeprefix("cert_")
