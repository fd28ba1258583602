"""SIGTERM to exit within a deploy window, on real processes started the production way.

* API (``railway_entrypoint.sh api``, 2 uvicorn workers): a new connection is refused at once (not
  queued and reset), a request in flight still gets its 200, ``/health`` on a kept-alive connection
  says ``draining``, and the process tree exits well before ``sizing.shutdown_seconds(settings, "api")``.
* Workers (``app.start_commands``, the Railway start command): a task that fits the soft shutdown finishes
  where it runs; a longer one is handed back at once and finishes on another worker; each completes
  exactly once, and the stopped worker's tree exits within ``sizing.shutdown_seconds``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from app import sizing
from app.config.settings import Settings
from devkit.ports import free_port
from tests.support.auth import auth
from tests.support.env import BACKEND
from tests.support.fault_proxy import FaultProxy, through

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("migrated_database")]
ENTRYPOINT = BACKEND / "scripts" / "railway_entrypoint.sh"


def connect_outcome(port: int) -> str:
    """What a new TCP connection to the port meets: accepted, refused, or (the old bug) reset."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return "accepted"
    except ConnectionRefusedError:
        return "refused"
    except OSError as error:
        return errno.errorcode.get(error.errno or 0, str(error))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until_serving(base: str, proc: subprocess.Popen[bytes], log: Path, workers: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        ready = log.read_text(errors="replace").count("Application startup complete")
        try:
            if ready == workers and httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(log.read_text(errors="replace")[-3000:])


def test_api_refuses_at_once_drains_and_exits_in_time(
    subprocess_env: dict[str, str], proxy: FaultProxy, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **subprocess_env,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SERVICE_TYPE": "api",
        "PORT": str(port),
        "UVICORN_WORKERS": "2",
        "RUN_MIGRATIONS": "0",  # the fixture migrated the database
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "DATABASE_URL": through(proxy),
    }
    settings = Settings.from_mapping(env)
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", str(ENTRYPOINT)], cwd=BACKEND, env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc, log, workers=2)
        tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        with (
            httpx.Client(base_url=base, timeout=30) as kept_alive,
            httpx.Client(base_url=base, timeout=30, headers=auth()) as slow_client,
            concurrent.futures.ThreadPoolExecutor(1) as threads,
        ):
            assert kept_alive.get("/health").status_code == 200
            assert slow_client.get("/api/v1/roadmaps").status_code == 200  # its worker has a pool
            # A request in flight: the database stops answering (bytes held, not refused) until
            # restored, the way a slow query would keep it.
            proxy.stall()
            slow = threads.submit(slow_client.get, "/api/v1/roadmaps")
            time.sleep(0.5)
            assert not slow.done()

            sigterm = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            outcomes: list[str] = []
            while (outcome := connect_outcome(port)) != "refused" and time.monotonic() - sigterm < 5:
                outcomes.append(outcome)
                time.sleep(0.005)
            refused_after = time.monotonic() - sigterm
            assert outcome == "refused", outcomes
            assert set(outcomes) <= {"accepted"}, outcomes  # never reset

            health = kept_alive.get("/health")  # the connection opened before SIGTERM
            assert health.status_code == 503 and health.json()["status"] == "draining"
            assert health.headers["connection"] == "close"

            proxy.restore()
            response = slow.result(timeout=30)
            assert response.status_code == 200, response.text
            assert response.headers["connection"] == "close"

        proc.wait(timeout=sizing.shutdown_seconds(settings, "api"))
        exited_after = time.monotonic() - sigterm
        print(f"refused after {refused_after * 1000:.0f} ms ({len(outcomes)} accepted before), exit after "
              f"{exited_after:.2f} s (bound {sizing.shutdown_seconds(settings, 'api')} s)")  # fmt: skip
        assert refused_after < 0.25, outcomes
        assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
        # The whole tree within the same bound: a child (multiprocessing's resource tracker) may notice
        # its parent's exit a few milliseconds after the parent is reaped.
        bound = sigterm + sizing.shutdown_seconds(settings, "api")
        while [pid for pid in tree if alive(pid)] and time.monotonic() < bound:
            time.sleep(0.05)
        assert not [pid for pid in tree if alive(pid)]
        text = log.read_text(errors="replace")
        assert text.count("api_stopped") == 2  # each worker's lifespan closed its pools
        assert "outlived the shutdown" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_requests_waiting_in_the_accept_queue_are_served_not_reset(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """Connections the kernel completed before SIGTERM but no worker had accepted yet carry a request
    already; closing the listener would reset them (an edge's 502). The workers are frozen so that
    requests pile up in the accept queue, then SIGTERM arrives: every one is answered."""
    port = free_port()
    env = {
        **subprocess_env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SERVICE_TYPE": "api", "PORT": str(port), "UVICORN_WORKERS": "2", "RUN_MIGRATIONS": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }  # fmt: skip
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", str(ENTRYPOINT)], cwd=BACKEND, env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    workers: list[psutil.Process] = []
    try:
        wait_until_serving(base, proc, log, workers=2)
        workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2
        for worker in workers:
            worker.suspend()
        # Handshakes the kernel completes by itself; the requests wait, unread, in the accept queue.
        queued = []
        for _ in range(5):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            queued.append(conn)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the supervisor has closed its copy and signalled the (frozen) workers
        for worker in workers:
            worker.resume()
        answers = []
        for conn in queued:
            with conn:
                try:
                    answers.append(conn.recv(200).split(b"\r\n", 1)[0].decode())
                except ConnectionResetError:
                    answers.append("reset")
        assert answers == ["HTTP/1.1 503 Service Unavailable"] * 5, answers  # /health: draining
        proc.wait(timeout=30)
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.resume()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- workers ---------------------------------------------------------------------------------------------
SOFT_SHUTDOWN = 3.0


def start_production_worker(service: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The Railway start command of ``service``, with a node name of its own (two run side by side)."""
    from app.start_commands import start_command

    command = start_command(Settings.from_mapping(env), service)
    command = [f"--hostname={log.stem}@%h" if a.startswith("--hostname=") else a for a in command]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=BACKEND, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_worker_ready(proc: subprocess.Popen[bytes], log: Path, children: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        if " ready." in log.read_text(errors="replace") and len(worker_children(proc)) == children:
            return
        time.sleep(0.2)
    raise AssertionError(log.read_text(errors="replace")[-3000:])


def worker_children(proc: subprocess.Popen[bytes]) -> set[int]:
    return {c.pid for c in psutil.Process(proc.pid).children()}


@pytest.fixture
def worker_env(subprocess_env: dict[str, str]) -> dict[str, str]:
    return {
        **subprocess_env,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "CELERY_SOFT_SHUTDOWN_TIMEOUT": str(SOFT_SHUTDOWN),
        "CELERY_CONTENT_CONCURRENCY": "2",
    }


def test_worker_finishes_or_hands_back_its_tasks_and_exits_in_time(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    from celery.result import AsyncResult

    from app.core.celery_app import celery_app
    from app.tasks.probe import probe

    settings = Settings.from_mapping(worker_env)
    stopping_log, taking_log = tmp_path / "stopping.log", tmp_path / "taking.log"
    stopping = start_production_worker("celery_content", worker_env, stopping_log)
    taking: subprocess.Popen[bytes] | None = None
    try:
        wait_worker_ready(stopping, stopping_log, 2)
        # Both start on the stopping worker (the only one): one fits the soft shutdown, one does not.
        short = probe.s(sleep_seconds=SOFT_SHUTDOWN / 2).set(queue="content_generation").delay()
        long = probe.s(sleep_seconds=20).set(queue="content_generation").delay()
        deadline = time.monotonic() + 20
        while {AsyncResult(t.id, app=celery_app).state for t in (short, long)} != {"STARTED"}:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        first_pids = {AsyncResult(t.id, app=celery_app).info["pid"] for t in (short, long)}
        tree = [stopping.pid, *worker_children(stopping)]
        assert first_pids == set(tree[1:])

        sigterm = time.monotonic()
        stopping.send_signal(signal.SIGTERM)
        # The next deployment's worker, already up on Railway; here it starts now.
        taking = start_production_worker("celery_content", worker_env, taking_log)
        stopping.wait(timeout=sizing.shutdown_seconds(settings, "celery_content") + 10)
        exited_after = time.monotonic() - sigterm
        print(f"worker exited after {exited_after:.2f} s")
        assert exited_after < sizing.shutdown_seconds(settings, "celery_content")
        assert not [pid for pid in tree if alive(pid)]

        assert short.get(timeout=10)["pid"] in first_pids  # finished where it ran
        handed_back = long.get(timeout=60)
        finished_after = time.monotonic() - sigterm
        assert handed_back["pid"] in worker_children(taking)  # redelivered at once, not after the
        assert finished_after < 20 + 20  # visibility timeout (an hour)
        time.sleep(1)
        assert short.id not in taking_log.read_text(errors="replace")  # done once, not twice
        assert stopping_log.read_text(errors="replace").count(f"{long.id}] succeeded") == 0
        bound = sizing.shutdown_seconds(settings, "celery_content")
        print(f"worker exited after {exited_after:.2f} s (bound {bound} s); handed back, done after "
              f"{finished_after:.2f} s")  # fmt: skip
    finally:
        for proc in (stopping, taking):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
