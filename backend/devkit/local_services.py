"""Find PostgreSQL and Redis at the configured URLs, or start embedded ones under ``.data/``
(scripts/local_services.py is the command dev.sh and test.sh run).

What "configured" means is what the app reads: ``DATABASE_URL`` or ``POSTGRES_HOST/PORT/USER/PASSWORD/DB``
(``Settings.database_url``), and ``REDIS_URL``, from the environment.

When a server answers, it is used as it is (the database is created if missing). When nothing listens
on a local address, an embedded server is started (``devkit.postgres``, ``devkit.redis_server``) with
its data kept under ``.data/``; it outlives the command and ``stop()`` ends it later.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from app.config import connections
from app.config.settings import Settings
from app.config.urls import mask_url
from devkit.ports import listening
from devkit.postgres import OwnPostgres
from devkit.redis_server import OwnRedis

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("LOCAL_DATA_DIR", ROOT / ".data"))
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}
MISSING = "no {what} answers at the configured address and {how}: pip install -e 'backend[local]' (or {fix})"


def say(message: str) -> None:
    print(f"[local-services] {message}", file=sys.stderr, flush=True)


def ensure_database(url: str) -> None:
    """Create the configured database when the server answers but the database does not exist."""
    import asyncio

    import asyncpg

    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "postgres"
    admin = urlunsplit(parts._replace(path="/postgres"))

    async def run() -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
                say(f"created database {name}")
        finally:
            await conn.close()

    asyncio.run(run())


def ensure_postgres() -> str:
    """The URL of a PostgreSQL that answers, with the configured database in it."""
    url = connections.database_conninfo(Settings.from_mapping(os.environ))
    parts = urlsplit(url)
    host, port, user = parts.hostname or "localhost", parts.port or 5432, parts.username or "postgres"
    if listening(port, host, timeout=1.0):  # a remote host may be slower
        say(f"PostgreSQL answers at {mask_url(url)}")
    elif host in LOCAL_HOSTS:
        try:
            server = OwnPostgres(max_connections=400, port=port, folder=DATA / "postgres", superuser=user)
        except ImportError:
            raise SystemExit(
                MISSING.format(what="PostgreSQL", how="no PostgreSQL binaries were found",
                               fix="start PostgreSQL and set POSTGRES_HOST/PORT")
            ) from None  # fmt: skip
        say(f"starting embedded PostgreSQL on 127.0.0.1:{port} (max_connections=400) in {server.folder}")
        server.start()
        (DATA / "postgres.started").write_text(f"{port}\n{user}")
        url = urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))
    else:
        raise SystemExit(f"PostgreSQL at {host}:{port} does not answer; start it or fix POSTGRES_HOST")
    ensure_database(url)
    return url


def ensure_redis() -> str:
    """The URL of a Redis that answers."""
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 6379
    if listening(port, host, timeout=1.0):
        say(f"Redis answers at {mask_url(url)}")
        return url
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"Redis at {host}:{port} does not answer; start it or fix REDIS_URL")
    say(f"starting embedded Redis on 127.0.0.1:{port}")
    # Queued and unacknowledged tasks survive a restart; synced every second, Redis's default.
    try:
        OwnRedis(port, persistent=True, fsync="everysec", folder=DATA / "redis").start()
    except ImportError:
        raise SystemExit(
            MISSING.format(what="Redis", how="the embedded one is not installed", fix="start redis-server")
        ) from None
    (DATA / "redis.started").write_text(str(port))
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


def stop() -> None:
    """Stop only what ``ensure_postgres`` / ``ensure_redis`` started."""
    marker = DATA / "postgres.started"
    if marker.exists():
        port, user = marker.read_text().split()
        OwnPostgres(port=int(port), folder=DATA / "postgres", superuser=user).stop()
        marker.unlink()
        say("stopped embedded PostgreSQL")
    marker = DATA / "redis.started"
    if marker.exists():
        OwnRedis(int(marker.read_text()), folder=DATA / "redis").stop()
        marker.unlink()
        say("stopped embedded Redis")
