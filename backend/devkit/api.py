"""The API as a process of its own on loopback (``uvicorn app.main:app``, or production's start command);
waiting until a server answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

BACKEND = Path(__file__).resolve().parents[1]  # where alembic.ini and app/ sit


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


def production_command(env: dict[str, str], port: int, workers: int) -> list[str]:
    """The start command production runs (app.start_commands: the draining server and the bounded HTTP
    protocol), on loopback, with ``workers`` workers and no access log."""
    from app.config.settings import Settings
    from app.start_commands import start_command

    command = start_command(
        Settings.from_mapping({**env, "UVICORN_WORKERS": str(workers)}), "api", port=str(port)
    )
    assert command[:2] == ["python", "-m"], command
    command[command.index("--host") + 1] = "127.0.0.1"
    return [sys.executable, *command[1:], "--no-access-log"]


@contextmanager
def running_api(
    env: dict[str, str], port: int, workers: int = 1, *, production: bool = False
) -> Iterator[str]:
    """``uvicorn app.main:app``; with ``production``, the server and protocol production runs
    (``production_command``)."""
    # The log goes to a file, never to an undrained pipe: a full pipe blocks the server's next write,
    # which looks exactly like the hang these tests exist to rule out.
    log = tempfile.NamedTemporaryFile(prefix="uvicorn-", suffix=".log", delete=False)  # noqa: SIM115
    command = (
        production_command(env, port, workers)
        if production
        else [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
              "--workers", str(workers), "--no-access-log"]
    )  # fmt: skip
    proc = subprocess.Popen(
        command,
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
