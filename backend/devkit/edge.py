"""HAProxy with the project's edge configuration (deploy/haproxy/api-edge.cfg) in front of an API on
loopback, for the tests and benchmarks of API_ADMISSION=edge."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devkit.api import BACKEND, wait_answering
from devkit.ports import free_port

CONFIG = BACKEND.parent / "deploy" / "haproxy" / "api-edge.cfg"


def haproxy_binary() -> str | None:
    """Debian installs it in /usr/sbin, which a non-root PATH often lacks."""
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )


@dataclass(frozen=True)
class RunningEdge:
    url: str  # what clients connect to
    pid: int


@contextmanager
def running_edge(api_port: int, agent_port: int, retry_after: int = 2) -> Iterator[RunningEdge]:
    """HAProxy on a free loopback port in front of the API on ``api_port`` (already answering), its
    limit from the agent on ``agent_port``."""
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
    # To a file, as the API's log (devkit.api): an undrained pipe would block HAProxy's next write.
    log = tempfile.NamedTemporaryFile(prefix="haproxy-", suffix=".log", delete=False)  # noqa: SIM115
    # -db: in the foreground, as the one process this context manager stops.
    proc = subprocess.Popen([binary, "-db", "-f", str(CONFIG)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(url, proc, Path(log.name), statuses=(200, 503), timeout=10)  # /health, through it
        yield RunningEdge(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)
