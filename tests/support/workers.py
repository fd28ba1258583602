"""Real Celery workers for the tests: started as subprocesses exactly as production starts them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.support.env import BACKEND, BASE_ENV


@dataclass
class Worker:
    queue: str
    concurrency: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.pid).children()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in [*self.children(), self.pid]:
                    kill_quietly(pid)
                self.proc.wait(timeout=10)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def start_worker(queue: str, concurrency: int, env: dict[str, str], log_dir: Path) -> Worker:
    """A plain ``celery worker --queues=<queue>``, no ``--concurrency``: the child count comes from the
    queue's service setting (``<PREFIX>_CONCURRENCY``), as in any deployment's start command."""
    from app import topology

    spec = topology.for_queue(queue)
    assert spec is not None, queue
    log_path = log_dir / f"{queue}.log"
    node = f"{queue}-{uuid.uuid4().hex[:6]}@%h"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app.core.celery_app", "worker", f"--queues={queue}",
         f"--hostname={node}", "--loglevel=INFO", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=BACKEND, env={**env, spec.processes_var: str(concurrency)}, stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    return Worker(queue, concurrency, proc, log_path)


def wait_ready(workers: list[Worker], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pending = list(workers)
    while pending and time.monotonic() < deadline:
        for worker in list(pending):
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker {worker.queue} exited:\n{worker.log()[-3000:]}")
            if " ready." in worker.log() and len(worker.children()) == worker.concurrency:
                pending.remove(worker)
        time.sleep(0.2)
    if pending:
        raise RuntimeError(f"workers not ready: {[w.queue for w in pending]}")


def client_pid(port: int) -> int | None:
    """The local process that owns the client end of a TCP connection (needs to run as the owner)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


def queues() -> tuple[str, ...]:
    from app import topology

    return topology.QUEUES


@contextmanager
def running_workers(
    log_dir: Path, concurrency: int = 2, per_queue: dict[str, dict[str, str]] | None = None
) -> Iterator[dict[str, Worker]]:
    """The three workers on the test database and Redis prefix; stopped (and reaped) afterwards."""
    env = {**os.environ, **BASE_ENV, "PYTHONUNBUFFERED": "1"}
    started = {
        q: start_worker(q, concurrency, {**env, **(per_queue or {}).get(q, {})}, log_dir) for q in queues()
    }
    try:
        wait_ready(list(started.values()))
        yield started
    finally:
        for worker in started.values():
            worker.stop()
