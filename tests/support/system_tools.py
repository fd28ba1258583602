"""System programs some tests need (pgbouncer, promtool, wrk), from Debian packages.

scripts/test.sh installs them when it can (root with apt-get). Without them those tests skip with the
reason, unless REQUIRE_SYSTEM_TOOLS=1 (CI sets it), where a missing tool is a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(program: str, package: str) -> str:
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if os.path.exists(p)), None
    )
    if path:
        return path
    message = f"{program} is not installed (Debian package {package}: apt-get install {package})"
    if os.environ.get("REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)
