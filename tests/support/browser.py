"""Headless Chromium (Debian package ``chromium``) with no network but loopback.

Chromium's host resolver maps every name to "not found" except 127.0.0.1, so a page that needs an
asset from a CDN renders without it, as it would on a machine with no internet. Background
networking is off, as it must be on this workplace's closed network.
"""

from __future__ import annotations

import subprocess
import tempfile

from tests.support.system_tools import require

OFFLINE = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


def _chromium(url: str, *args: str, budget_ms: int, timeout: float) -> subprocess.CompletedProcess[str]:
    binary = require("chromium", "chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--host-resolver-rules={OFFLINE}",
             f"--virtual-time-budget={budget_ms}", *args, url],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


def rendered_dom(url: str, *, budget_ms: int = 10_000, timeout: float = 90) -> str:
    """The page's DOM after its scripts ran (``budget_ms`` of virtual time), offline."""
    result = _chromium(url, "--dump-dom", budget_ms=budget_ms, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
