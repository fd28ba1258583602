"""scripts/dev.sh: one run per checkout.

A second run from the same checkout used to empty the first one's Prometheus multiprocess directories
(the first then stopped reporting its metrics) and, on its way out, stop the first one's embedded
PostgreSQL. It is now refused before it touches anything. The tests run a copy of the scripts in a
temporary checkout, so nothing here starts the stack or touches this checkout's .data/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.env import ROOT

LIB = "scripts/lib/single_run.sh"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts" / "lib").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "dev.sh", tmp_path / "scripts" / "dev.sh")
    for script in (ROOT / "scripts" / "lib").glob("*.sh"):
        shutil.copy(script, tmp_path / "scripts" / "lib" / script.name)
    return tmp_path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def claim(then: str = "") -> list[str]:
    """``bash -c`` that sources the library and claims the checkout as dev.sh does, then runs ``then``."""
    return ["bash", "-c", f'. {LIB}; claim_single_run "$PWD/.data/dev.pid" dev.sh; {then}']


def run(command: list[str], checkout: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=10)


def wait_for(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return path.read_text().strip()


def test_a_second_run_is_refused_before_it_touches_anything(
    checkout: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # "& wait": bash would otherwise exec the last command, and the pid would be a plain sleep.
    first = subprocess.Popen(claim("sleep 60 & wait"), cwd=checkout)
    processes.append(first)
    pidfile = checkout / ".data" / "dev.pid"
    assert wait_for(pidfile) == str(first.pid)
    metrics = checkout / ".data" / "prometheus" / "api"
    metrics.mkdir(parents=True)
    (metrics / "counter_1234.db").write_bytes(b"the first run's metrics")

    started = time.monotonic()
    second = subprocess.run(
        ["bash", "scripts/dev.sh"], cwd=checkout, capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1
    assert time.monotonic() - started < 5
    assert f"another dev.sh (pid {first.pid}) is already running from this checkout" in second.stderr
    # Untouched: the first run's metrics, its claim, and no .venv or env file created by the second.
    assert (metrics / "counter_1234.db").read_bytes() == b"the first run's metrics"
    assert pidfile.read_text().strip() == str(first.pid)
    assert not (checkout / ".venv").exists() and not (checkout / ".env.development").exists()
    assert first.poll() is None


def test_a_claim_left_by_a_killed_run_is_taken_over(checkout: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile = checkout / ".data" / "dev.pid"
    pidfile.parent.mkdir()
    pidfile.write_text(f"{gone.pid}\n")
    result = run(claim('echo "$$"; cat .data/dev.pid'), checkout)
    assert result.returncode == 0, result.stderr
    own, recorded = result.stdout.split()
    assert own == recorded
    assert f"taking over {pidfile} from pid {gone.pid}" in result.stderr


def test_a_recycled_pid_of_another_program_does_not_block(
    checkout: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    other = subprocess.Popen(["sleep", "60"])
    processes.append(other)
    pidfile = checkout / ".data" / "dev.pid"
    pidfile.parent.mkdir()
    pidfile.write_text(f"{other.pid}\n")
    result = run(claim("cat .data/dev.pid"), checkout)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() != str(other.pid)


def test_a_run_releases_only_its_own_claim(checkout: Path) -> None:
    pidfile = checkout / ".data" / "dev.pid"
    mine = run(claim(f'release_single_run "$PWD/.data/dev.pid"; test ! -e {pidfile}'), checkout)
    assert mine.returncode == 0, mine.stderr
    pidfile.write_text("1\n")  # another run's (pid 1 is never a dev.sh)
    theirs = run(["bash", "-c", f'. {LIB}; release_single_run "$PWD/.data/dev.pid"'], checkout)
    assert theirs.returncode == 0
    assert pidfile.read_text() == "1\n"


# --- a second checkout on the same machine ---------------------------------------------------------


def new_checkout(root: Path) -> Path:
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "dev_stacks.py", root / "scripts" / "dev_stacks.py")
    shutil.copy(ROOT / ".env.development.example", root / ".env.development")
    return root


def claim_stack(checkout: Path, state: Path, *, fresh: bool, port: int) -> subprocess.CompletedProcess[str]:
    """What dev.sh does after loading the env file: the env file's values in the environment."""
    env = {"PATH": os.environ["PATH"], "XDG_STATE_HOME": str(state)}
    for line in (checkout / ".env.development").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            env[name] = value
    env.setdefault("PORT", str(port))
    command = [sys.executable, "scripts/dev_stacks.py", "claim", *(["--fresh"] if fresh else [])]
    return subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_second_checkout_gets_its_own_database_redis_and_port(tmp_path: Path) -> None:
    state, port = tmp_path / "state", free_port()
    first, second, third = (new_checkout(tmp_path / name) for name in ("first", "second", "third"))
    one = claim_stack(first, state, fresh=True, port=port)
    assert one.returncode == 0 and one.stdout.strip() == f"PORT={port}", one.stderr
    assert (first / ".env.development").read_text() == (ROOT / ".env.development.example").read_text()
    # A new checkout on the same machine: its own database, Redis database and port, written down.
    two = claim_stack(second, state, fresh=True, port=port)
    assert two.returncode == 0, two.stderr
    chosen = (second / ".env.development").read_text().split("# Chosen by scripts/dev.sh")[1]
    assert "POSTGRES_DB=roadmap_dev_2" in chosen and "REDIS_URL=redis://localhost:6379/1" in chosen
    assert f"PORT={port}" not in chosen and two.stdout.startswith("PORT=")
    assert "POSTGRES_DB=roadmap_dev_2" in two.stderr
    # Its next run keeps them; the first keeps its own.
    assert claim_stack(second, state, fresh=False, port=port).returncode == 0
    assert claim_stack(first, state, fresh=False, port=port).stdout.strip() == f"PORT={port}"
    # An env file copied from the first checkout is refused, naming the variables to set.
    shutil.copy(first / ".env.development", third / ".env.development")
    three = claim_stack(third, state, fresh=False, port=port)
    assert three.returncode == 1 and str(first) in three.stderr
    assert "set POSTGRES_DB=roadmap_dev_3 REDIS_URL=redis://localhost:6379/2" in three.stderr
    # A checkout that is gone no longer holds anything.
    shutil.rmtree(first)
    assert claim_stack(third, state, fresh=False, port=port).returncode == 0


def test_what_dev_stacks_prints_never_shows_a_password(tmp_path: Path) -> None:
    state, port = tmp_path / "state", free_port()
    first, second = new_checkout(tmp_path / "first"), new_checkout(tmp_path / "second")
    for checkout in (first, second):
        with (checkout / ".env.development").open("a") as env:
            env.write("DATABASE_URL=postgresql://app:s3cret-pw@localhost:5432/roadmap_dev\n")
            env.write("REDIS_URL=redis://:s3cret-pw@localhost:6379/0\n")
    assert claim_stack(first, state, fresh=True, port=port).returncode == 0
    chosen = claim_stack(second, state, fresh=True, port=port)
    third = new_checkout(tmp_path / "third")
    shutil.copy(second / ".env.development", third / ".env.development")  # would share the second's
    refused = claim_stack(third, state, fresh=False, port=port)
    assert chosen.returncode == 0 and refused.returncode == 1
    for said in (chosen.stderr, refused.stderr):
        assert "s3cret-pw" not in said and "app:***@" in said, said
    # the env file itself gets the real value
    assert (
        "postgresql://app:s3cret-pw@localhost:5432/roadmap_dev_2" in (second / ".env.development").read_text()
    )
