"""What an unauthenticated connection can make the API hold, on the API started the production way
(``railway_entrypoint.sh``, the start command: app.api.http_protocol in front of the app).

Before the bounds, under uvicorn's stock httptools protocol: 200 connections each sending 1 MB of
headers and never finishing grew the workers by 212 MB, a 100 KB header and 10,000 headers got 200,
and a connection that never finished its headers was kept for ever.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devkit.ports import free_port
from tests.support.env import BACKEND

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("migrated_database")]
ENTRYPOINT = BACKEND / "scripts" / "railway_entrypoint.sh"
HEADER_TIMEOUT = 2.0  # REQUEST_HEADER_TIMEOUT_SECONDS for these servers: the slowloris test waits it out


def start_api(env: dict[str, str], tmp_path: Path, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "SERVICE_TYPE": "api",
        "PORT": str(port), "UVICORN_WORKERS": str(workers), "RUN_MIGRATIONS": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "REQUEST_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    }  # fmt: skip
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", str(ENTRYPOINT)], cwd=BACKEND, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        ready = log.read_text(errors="replace").count("Application startup complete") == workers
        try:
            if ready and httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(log.read_text(errors="replace")[-3000:])


@pytest.fixture
def api(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc, port = start_api(subprocess_env, tmp_path, workers=2)
    try:
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tree_rss(pid: int) -> int:
    """Resident memory of the supervisor and every worker, summed."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def answer(conn: socket.socket, timeout: float = 10) -> str:
    """The status line the server sent before closing, or "closed" / "reset" when it sent none."""
    conn.settimeout(timeout)
    try:
        data = conn.recv(200)
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "still open"
    return data.split(b"\r\n", 1)[0].decode() if data else "closed"


def send_request(port: int, head: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        try:
            conn.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            return "reset"  # refused before the whole section was sent
        return answer(conn)


def head(*lines: bytes) -> bytes:
    """A GET /health header section with these extra header lines."""
    return b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


REFUSED = {"HTTP/1.1 431 Request Header Fields Too Large", "closed", "reset"}


def test_oversized_and_slow_header_sections_are_refused(api: tuple[subprocess.Popen[bytes], int]) -> None:
    _, port = api
    assert send_request(port, head()) == "HTTP/1.1 200 OK"
    assert send_request(port, head(b"X-Big: " + b"a" * 100_000)) in REFUSED
    assert send_request(port, head(b"X-Big: " + b"a" * 40_000)) in REFUSED  # likely whole in one read
    assert send_request(port, head(*(b"X-%d: v" % i for i in range(10_000)))) in REFUSED
    # Over the count while far under the size (101 headers, 1.3 KB): the count alone refuses it.
    counted = head(*(b"X-%d: v" % i for i in range(100)))
    assert send_request(port, counted) == "HTTP/1.1 431 Request Header Fields Too Large"

    # Slowloris: a header byte every 0.3 s never finishes the section; and a connection that says nothing.
    outcomes: dict[str, tuple[str, float]] = {}

    def slowloris() -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            try:
                while time.monotonic() - started < 3 * HEADER_TIMEOUT:
                    conn.sendall(b"X")
                    conn.settimeout(0.3)
                    try:
                        data = conn.recv(200)
                    except TimeoutError:
                        continue
                    status = data.split(b"\r\n")[0].decode() if data else "closed"
                    outcomes["slowloris"] = (status, time.monotonic() - started)
                    return
            except (BrokenPipeError, ConnectionResetError):
                outcomes["slowloris"] = ("reset", time.monotonic() - started)
                return
        outcomes["slowloris"] = ("still open", time.monotonic() - started)

    def silent() -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            outcomes["silent"] = (answer(conn, timeout=3 * HEADER_TIMEOUT), time.monotonic() - started)

    def kept_alive() -> None:
        """The next request on a kept-alive connection begins and never ends its headers."""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(head())
            response = b""
            while b"\r\n\r\n" not in response:
                response += conn.recv(65536)
            top, body = response.split(b"\r\n\r\n", 1)
            length = int(top.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += conn.recv(65536)
            assert top.startswith(b"HTTP/1.1 200 OK"), top
            started = time.monotonic()
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            outcomes["kept_alive"] = (answer(conn, timeout=3 * HEADER_TIMEOUT), time.monotonic() - started)

    threads = [threading.Thread(target=f) for f in (slowloris, silent, kept_alive)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(outcomes)
    for name in ("slowloris", "silent", "kept_alive"):
        status, after = outcomes[name]
        assert status in {"HTTP/1.1 408 Request Timeout", "closed", "reset"}, outcomes
        assert HEADER_TIMEOUT - 0.1 <= after <= HEADER_TIMEOUT + 1.0, outcomes

    # Normal requests still work, on fresh and kept-alive connections.
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert [client.get("/health").status_code for _ in range(5)] == [200] * 5
        # A request whose header section is large but within the limit (20 KB) is served.
        assert client.get("/health", headers={"x-large": "a" * 20_000}).status_code == 200


def flood(port: int, pid: int, size: int) -> tuple[int, int, list[socket.socket]]:
    """200 connections each send ``size`` bytes of one header and never finish it: the peak RSS of
    the API's tree meanwhile, how many were reset while sending, and the connections (still open)."""
    connections = []
    for _ in range(200):
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.setblocking(False)
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Flood: ")
        connections.append(conn)
    sent = dict.fromkeys(connections, 0)
    reset, peak = 0, tree_rss(pid)
    live = list(connections)
    until = time.monotonic() + 20
    while live and time.monotonic() < until:
        for conn in list(live):
            try:
                sent[conn] += conn.send(b"a" * min(16_384, size - sent[conn]))
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                reset += 1
                live.remove(conn)
                continue
            if sent[conn] >= size:
                live.remove(conn)  # all sent, never finished: held open
        peak = max(peak, tree_rss(pid))
        time.sleep(0.01)
    for _ in range(5):  # what the workers still read from the socket buffers
        time.sleep(0.1)
        peak = max(peak, tree_rss(pid))
    return peak, reset, connections


def test_unfinished_header_sections_do_not_grow_memory(api: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = api
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for _ in range(20):  # warm both workers' code paths before the baseline
            assert client.get("/health").status_code == 200
    time.sleep(0.5)
    before = tree_rss(proc.pid)

    # 1 MB each, the flood: each is refused once past the limit.
    peak, reset, connections = flood(port, proc.pid, 1_048_576)
    grown = (peak - before) / 1e6
    print(
        f"1 MB x 200: RSS {before / 1e6:.0f} MB -> peak {peak / 1e6:.0f} MB (+{grown:.1f} MB), {reset} reset"
    )
    assert grown < 20, grown
    # Every one was refused: the server answered 431 or closed it (stock httptools kept them all open).
    outcomes = [answer(conn, timeout=5) for conn in connections]
    for conn in connections:
        conn.close()
    assert set(outcomes) <= REFUSED, sorted(set(outcomes))

    # 30 KB each, just under the limit: held until the header deadline, then closed.
    started = time.monotonic()
    peak, reset, connections = flood(port, proc.pid, 30_000)
    grown = (peak - before) / 1e6
    print(f"30 KB x 200: RSS peak {peak / 1e6:.0f} MB (+{grown:.1f} MB), {reset} reset")
    assert grown < 20, grown
    outcomes = [
        answer(conn, timeout=max(0.1, started + HEADER_TIMEOUT + 2 - time.monotonic()))
        for conn in connections
    ]
    for conn in connections:
        conn.close()
    assert set(outcomes) <= {"HTTP/1.1 408 Request Timeout", "closed", "reset"}, sorted(set(outcomes))

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert client.get("/health").status_code == 200


def test_connections_over_the_per_worker_cap_are_answered_503(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    proc, port = start_api({**subprocess_env, "API_MAX_CONNECTIONS_PER_WORKER": "16"}, tmp_path, workers=1)
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
        time.sleep(0.3)  # accepted by the worker
        assert send_request(port, head()) == "HTTP/1.1 503 Service Unavailable"
        idle.pop().close()
        time.sleep(0.3)  # the worker saw it close: a slot is free again
        assert send_request(port, head()) == "HTTP/1.1 200 OK"
        for conn in idle:
            conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
