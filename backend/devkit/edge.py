"""HAProxy with the project's edge configuration (deploy/haproxy/api-edge.cfg) in front of an API on
loopback, for the tests and benchmarks of API_ADMISSION=edge."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from devkit.api import BACKEND
from devkit.ports import free_port

CONFIG = BACKEND.parent / "deploy" / "haproxy" / "api-edge.cfg"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )


@contextmanager
def running_edge(api_port: int, agent_port: int, retry_after: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """HAProxy on a free loopback port, in front of ``api_port``; yields the process (its port is in
    ``proc.args``' environment: use ``edge_url``)."""
    binary = haproxy_binary()
    if binary is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
    port = free_port()
    env = {
        **os.environ,
        "EDGE_BIND": f"127.0.0.1:{port}",
        "API_UPSTREAM": f"127.0.0.1:{api_port}",
        "API_EDGE_AGENT_PORT": str(agent_port),
        "RETRY_AFTER_SECONDS": str(retry_after),
    }
    # -db: stay in the foreground; -Ws is not needed, one process.
    proc = subprocess.Popen([binary, "-db", "-f", str(CONFIG)], env=env, stderr=subprocess.PIPE)
    proc.edge_port = port  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {proc.stderr.read().decode(errors='replace')}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("haproxy did not listen within 10 s") from None
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def edge_url(proc: subprocess.Popen[bytes]) -> str:
    return f"http://127.0.0.1:{proc.edge_port}"  # type: ignore[attr-defined]
