"""A body larger than MAX_REQUEST_BODY_BYTES is refused (413) before it is read, on a real uvicorn.

Four anonymous 250 MB POSTs used to take the API from 592 MB to 3.1 GB: the body was read whole, and
only then did authentication answer 401. Here the server must answer while most of the body is still
unsent, and its memory must not grow by anything like the bodies' size.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from devkit.api import production_command, wait_answering
from devkit.ports import free_port
from tests.support.auth import auth
from tests.support.env import BACKEND

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("migrated_database")]

LIMIT = 65_536
ANNOUNCED = 250 * 1024 * 1024  # what the attack announced
CHUNK = b"x" * 65_536


@pytest.fixture(scope="module")
def api(migrated_database: str) -> Iterator[tuple[str, psutil.Process]]:
    """One uvicorn process (no supervisor: its RSS is the application's)."""
    env = {**os.environ, "MAX_REQUEST_BODY_BYTES": str(LIMIT)}
    port = free_port()
    with tempfile.NamedTemporaryFile(prefix="uvicorn-", suffix=".log", delete=False) as log:
        # The start command's server and protocol, which hold the bound (app.api.http_protocol), with
        # --workers 1: uvicorn then serves in this one process.
        proc = subprocess.Popen(
            production_command(env, port, workers=1),
            cwd=BACKEND,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_answering(base, proc, Path(log.name), statuses=(200, 503))
        yield base, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        os.unlink(log.name)


def post_streaming(base: str, headers: dict[str, str], *, chunked: bool, budget: int) -> tuple[int, int]:
    """POST a body of up to ``budget`` bytes, stopping as soon as the server answers (or stops
    reading). Returns (status, bytes sent)."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    sent = 0
    try:
        lines = ["POST /api/v1/roadmaps HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {ANNOUNCED}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.setblocking(False)
        while sent < budget and not select.select([sock], [], [], 0)[0]:
            data = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK
            try:
                sent += sock.send(data)  # a partial send is fine: the body is garbage anyway
            except BlockingIOError:
                # The server stopped reading (flow control): it holds no more than its buffer.
                if not select.select([sock], [], [], 5)[0]:
                    break
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(10)
        response = b""
        try:
            while b"\r\n" not in response and (part := sock.recv(4096)):
                response += part
        except TimeoutError:
            return 0, sent  # no answer: the server is still waiting for the rest of the body
        return int(response.split(b" ", 2)[1]), sent
    finally:
        sock.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("token", [False, True], ids=["anonymous", "user"])
def test_big_bodies_are_refused_before_they_are_read(
    api: tuple[str, psutil.Process], chunked: bool, token: bool
) -> None:
    base, process = api
    before = process.memory_info().rss
    headers = auth() if token else {}
    results = [post_streaming(base, headers, chunked=chunked, budget=64 * 1024 * 1024) for _ in range(4)]
    grown = process.memory_info().rss - before
    print(f"chunked={chunked} token={token}: sent {[s for _, s in results]}, RSS +{grown / 2**20:.1f} MB")
    for status, sent in results:
        # 413 whoever asks (the body is judged before the token); never a 2xx or a 5xx.
        assert status == 413, results
        # Answered long before the 64 MB this client was ready to send.
        assert sent < 16 * 1024 * 1024, results
    assert grown < 32 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MB"


def test_a_body_within_the_limit_still_reaches_authentication(api: tuple[str, psutil.Process]) -> None:
    import httpx

    base, _ = api
    response = httpx.post(f"{base}/api/v1/roadmaps", json={"topic": "x" * 1000}, timeout=10)
    assert response.status_code == 401
    too_big = httpx.post(f"{base}/api/v1/roadmaps", json={"topic": "x" * LIMIT}, timeout=10)
    assert too_big.status_code == 413
    assert too_big.headers["connection"] == "close"
    # The connection it came on was closed; the server still answers on a new one.
    assert httpx.get(f"{base}/health", timeout=10).status_code in (200, 503)
