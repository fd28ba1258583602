"""Through a real PgBouncer in transaction mode: API requests, a workflow with its checkpointer, and
the server-side cap (max_db_connections) holding under concurrent load."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import psutil
import pytest

from app.config import connections
from app.config.settings import get_settings
from devkit.ports import free_port
from tests.support.auth import auth
from tests.support.env import BASE_ENV
from tests.support.system_tools import require

pytestmark = pytest.mark.usefixtures("migrated_database")

MAX_DB_CONNECTIONS = 4
RUN_AS = "postgres"  # pgbouncer refuses to run as root


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[tuple[int, int]]:
    binary = require("pgbouncer", "pgbouncer")
    try:
        account = pwd.getpwnam(RUN_AS)
    except KeyError:
        pytest.skip(f"no '{RUN_AS}' system user to run pgbouncer as")
    target = urlsplit(BASE_ENV["DATABASE_URL"])
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    (folder / "userlist.txt").write_text(f'"{target.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={target.hostname} port={target.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = {MAX_DB_CONNECTIONS}
max_db_connections = {MAX_DB_CONNECTIONS}
ignore_startup_parameters = extra_float_digits,options
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""
    )
    for path in [folder, *folder.iterdir()]:
        os.chown(path, account.pw_uid, account.pw_gid)

    def demote() -> None:
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    proc = subprocess.Popen([binary, str(folder / "pgbouncer.ini")], preexec_fn=demote)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"pgbouncer did not listen: {(folder / 'pgbouncer.log').read_text()[-2000:]}")
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def through_pgbouncer(pgbouncer: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> int:
    port, pid = pgbouncer
    target = urlsplit(BASE_ENV["DATABASE_URL"])
    url = f"postgresql://{target.username}@127.0.0.1:{port}{target.path}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DB_BEHIND_PGBOUNCER", "true")
    monkeypatch.setenv("DB_POOL_SIZE", "5")
    monkeypatch.setenv("DB_MAX_OVERFLOW", "5")
    get_settings.cache_clear()
    return pid


def server_connections_of(pid: int) -> int:
    """Connections the pgbouncer process holds to PostgreSQL."""
    backend_port = urlsplit(BASE_ENV["DATABASE_URL"]).port or 5432
    return sum(
        1 for c in psutil.Process(pid).net_connections("tcp") if c.raddr and c.raddr.port == backend_port
    )


async def test_api_requests_and_a_workflow_through_pgbouncer(
    through_pgbouncer: int, client: httpx.AsyncClient, test_db: asyncpg.Connection
) -> None:
    from app import runtime
    from app.tasks.content_generation_tasks import generate_content
    from app.workflows import roadmap_graph

    assert (await client.get("/health")).status_code == 200
    created = await client.post(
        "/api/v1/roadmaps", json={"topic": "PgBouncer", "concept_count": 6}, headers=auth()
    )
    assert created.status_code == 202
    roadmap_id = created.json()["id"]
    # The workflow's steps in this process (checkpointer and sessions both through PgBouncer), the
    # order the worker tasks run them in.
    bouncer = urlsplit(os.environ["DATABASE_URL"])
    assert urlsplit(connections.checkpointer_conninfo(get_settings())).port == bouncer.port
    assert await roadmap_graph.run(roadmap_id, "PgBouncer", 6) == "awaiting_content"
    report = await generate_content(roadmap_id)
    assert report.written == 6
    assert await roadmap_graph.resume_after_content(roadmap_id) == "completed"
    body = (await client.get(f"/api/v1/roadmaps/{roadmap_id}", headers=auth())).json()
    assert body["status"] == "completed" and body["concept_status"] == {"completed": 6}
    await runtime.current().aclose()


async def test_max_db_connections_caps_the_server_side(
    through_pgbouncer: int, client: httpx.AsyncClient
) -> None:
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            # In a thread: psutil's scan of the process's sockets would block the loop that serves the
            # requests, and on a loaded machine a few then waited out DB_POOL_TIMEOUT (503).
            peak = max(peak, await asyncio.to_thread(server_connections_of, through_pgbouncer))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    responses = await asyncio.gather(*(client.get("/api/v1/roadmaps", headers=auth()) for _ in range(60)))
    done.set()
    await watcher
    assert [r.status_code for r in responses] == [200] * len(responses), [r.text for r in responses][:3]
    assert 1 <= peak <= MAX_DB_CONNECTIONS


async def test_a_forgotten_db_behind_pgbouncer_is_named(
    pgbouncer: tuple[int, int], monkeypatch: pytest.MonkeyPatch, client: httpx.AsyncClient
) -> None:
    """PgBouncer refuses the session settings sent at connect: a 503 that names the setting to change,
    not database_unavailable (which would send an operator looking for an outage)."""
    port, _ = pgbouncer
    target = urlsplit(BASE_ENV["DATABASE_URL"])
    monkeypatch.setenv("DATABASE_URL", f"postgresql://{target.username}@127.0.0.1:{port}{target.path}")
    monkeypatch.setenv("DB_BEHIND_PGBOUNCER", "false")
    get_settings.cache_clear()
    response = await client.get("/api/v1/roadmaps", headers=auth("user"))
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["reason"] == "database_misconfigured" and "DB_BEHIND_PGBOUNCER=true" in body["detail"]
    assert response.headers["retry-after"]
