"""The docs' commands run as written, and their links lead somewhere.

Commands are taken from README.md, docs/*.md and the .env.*.example files: every line of a ```bash /
```sh / ```shell block (``$ `` lines of a ```console block), and every inline code span that is a
command (it starts with a program: python, curl, docker, ./scripts/..., or sets variables for one,
`DRY_RUN=1 SERVICE_TYPE=api backend/scripts/railway_entrypoint.sh`). Each one is either run or skipped,
and both lists are explicit: a command that matches neither fails the test until it is classified.

A command runs in a fresh `bash -c` at the repository root, with none of the test session's variables
(only PATH without the virtualenv, HOME and LANG), exactly as written. The README states one
convention for all of them: `python` is the virtualenv's (`. .venv/bin/activate`, as the README's
block shows), so a command whose program comes from the virtualenv (python, docker-compose) runs after
that line; everything else (./scripts/..., backend/scripts/railway_entrypoint.sh, .venv/bin/python)
runs without it. The only rewriting is SUBSTITUTIONS, each with its reason.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.support.env import ROOT

VENV = ROOT / ".venv"
# The Chinese original, kept as written: its bash blocks are another project's .env listings and
# Railway notes (bash scripts/railway_entrypoint.sh from its backend/, curl against its host), not
# this repository's commands. Its links are checked like every other document's.
NOT_COMMANDS = {"docs/connection-pool-guide.zh.md"}

# Programs a fresh shell gets from the virtualenv only.
FROM_VENV = {"python", "docker-compose"}
# Words that make an inline code span a command rather than a name.
PROGRAMS = FROM_VENV | {"python3", ".venv/bin/python", "curl", "docker", "railway", "celery", "uvicorn",
                        "git", "psql", "pip", "bash", "sh", "cd", ".", "source"}  # fmt: skip

# Skipped, by prefix, and why. The longest matching prefix (here or in RUN) decides.
SKIP = {
    "./scripts/dev.sh": "starts the whole stack and waits for Ctrl-C",
    "./scripts/test.sh": "runs the test suite (this test is part of it)",
    "curl ": "needs the running stack",
    "docker ": "needs a Docker engine (the compose files are checked by tests/test_compose.py)",
    "railway ": "talks to Railway",
    "git ": "changes the checkout",
    "celery ": "starts a worker",
    "uvicorn ": "starts the API",
    "python -m app.budget --audit": "reads pg_stat_activity of the environment's own database",
    "python -m app.budget --guard": "the start-up guard, for a service being started",
    "python -m app.budget --apply-cap": "sets the server's CONNECTION LIMIT (test_connection_cap.py runs it "
    "on a PostgreSQL of its own)",
    "python scripts/update_generated.py": "rewrites the generated files (its --check form runs)",
    "python scripts/bench_": "a benchmark: starts servers, runs for minutes",
    "python scripts/load_harness.py": "a benchmark: starts the production topology under load",
    "python scripts/measure_worker_connections.py": "a benchmark: starts Celery workers",
    "python scripts/rehearse_deploy.py": "a benchmark: two sets of services behind HAProxy, for minutes",
}
# Run, by prefix. A status other than 0 is expected only where EXPECTED_STATUS says so.
RUN = {
    ". .venv/bin/activate",
    "python -m app.budget",
    "python -m app.core.security",
    "python scripts/update_generated.py --check",
    "python scripts/import_graph.py --check",
    "DRY_RUN=1 SERVICE_TYPE=",
    "TOKEN=$(ENV_FILE=",
    "ENV_FILE=",
    "docker-compose config",
}
EXPECTED_STATUS = {
    # The budget's report exits 1 when the worst case exceeds the allocation: the guide's own
    # topologies do (176 > 120, 460 > 280), which is what the guide explains. Production is the
    # default environment of a shell that sets none.
    "python -m app.budget": 1,
    "python -m app.budget --json": 1,
    "python -m app.budget --environment development": 1,
    "python -m app.budget --environment production": 1,
    # Named, not invoked: without --sub, argparse prints its usage (exit 2).
    "python -m app.core.security": 2,
}
SUBSTITUTIONS = {
    # .env.development is created from the example by ./scripts/dev.sh; a checkout that only ran
    # ./scripts/test.sh (CI) has the example alone, and a developer's copy is theirs, not the test's.
    "ENV_FILE=.env.development ": "ENV_FILE=.env.development.example ",
}
# At least this many distinct commands must run: extraction that silently finds nothing fails.
MIN_RUN = 15

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`]+)`")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
TEMPLATE = re.compile(r"<[^>]*>|\[[^\]]*\]|\w\|\w|\.\.\.")


@dataclass
class Command:
    text: str
    places: list[str] = field(default_factory=list)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_sources() -> list[Path]:
    return [*documents(), *sorted(ROOT.glob(".env.*.example"))]


def strip_comment(line: str) -> str:
    """The command without its trailing `# comment` (a # inside quotes or a word is not one)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def block_commands(language: str, body: str) -> list[tuple[int, str]]:
    """(line offset in the block, command): continued lines (a trailing backslash) joined."""
    commands: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, line in enumerate(body.splitlines()):
        if not pending:
            start = offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = strip_comment(pending + line).strip(), ""
        if language == "console":
            if line.startswith("$ "):
                commands.append((start, line[2:].strip()))
        elif line:
            commands.append((start, line))
    return commands


def program(command: str) -> str:
    """The program a command line runs: its first word after any VAR=value assignments."""
    words = command.lstrip("(").split()
    while words and ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words[0] if words else ""


def is_command(span: str) -> bool:
    first = span.split()[0]
    name = program(span)
    if not name or (span == name and name in PROGRAMS):
        return False  # `DRY_RUN=1`: a variable; `python` alone: a program's name
    return name in PROGRAMS or name.startswith("./") or ASSIGNMENT.match(first) is not None


def extract() -> dict[str, Command]:
    found: dict[str, Command] = {}

    def add(text: str, place: str) -> None:
        found.setdefault(text, Command(text)).places.append(place)

    for path in command_sources():
        relative = path.relative_to(ROOT).as_posix()
        if relative in NOT_COMMANDS:
            continue
        text = path.read_text(encoding="utf-8")
        if path.name.endswith(".example"):  # commands live in the comments, in code spans
            lines = text.splitlines()
            text = "\n".join(line.lstrip()[1:] if line.lstrip().startswith("#") else "" for line in lines)
        for match in FENCE.finditer(text):
            language = match.group(1)
            if language in ("bash", "sh", "shell", "console"):
                first = text.count("\n", 0, match.start()) + 2
                for offset, command in block_commands(language, match.group(2)):
                    add(command, f"{relative}:{first + offset}")
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for match in SPAN.finditer(prose):
            span = " ".join(match.group(1).split())  # a span may wrap across lines
            if is_command(span):
                add(span, f"{relative}:{prose.count(chr(10), 0, match.start()) + 1}")
    return found


def decision(command: str) -> tuple[str, str]:
    """("run", "") or ("skip", why); ("unknown", "") for a command neither list covers."""
    if TEMPLATE.search(command):
        return "skip", "a template (<placeholder>, [optional], a|b), not a command line"
    best, verdict = "", ("unknown", "")
    for prefix, why in SKIP.items():
        if (command == prefix.strip() or command.startswith(prefix)) and len(prefix) > len(best):
            best, verdict = prefix, ("skip", why)
    for prefix in RUN:
        if (command == prefix or command.startswith(prefix)) and len(prefix) > len(best):
            best, verdict = prefix, ("run", "")
    return verdict


def fresh_environment() -> dict[str, str]:
    """A new login's variables: none of this session's (DATABASE_URL, ENVIRONMENT, VIRTUAL_ENV...)."""
    venv_bin = str(VENV / "bin")
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and p != venv_bin]
    return {"PATH": os.pathsep.join(path), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}


def run(command: str) -> subprocess.CompletedProcess[str]:
    for old, new in SUBSTITUTIONS.items():
        command = command.replace(old, new)
    script = f". .venv/bin/activate && {command}" if program(command) in FROM_VENV else command
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=fresh_environment(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip


COMMANDS = extract()
TO_RUN = sorted(c for c in COMMANDS if decision(c)[0] == "run")


def test_every_documented_command_is_classified() -> None:
    unknown = [
        f"{c.text!r} ({', '.join(c.places)})" for c in COMMANDS.values() if decision(c.text)[0] == "unknown"
    ]
    assert not unknown, "add to RUN or SKIP in tests/test_docs_commands.py: " + "; ".join(unknown)


def test_enough_commands_run() -> None:
    assert len(TO_RUN) >= MIN_RUN, TO_RUN
    # The convention the FROM_VENV rule applies is the one the README shows.
    assert ". .venv/bin/activate" in COMMANDS and "README.md" in COMMANDS[". .venv/bin/activate"].places[0]


def test_the_lists_name_only_real_things() -> None:
    for name in NOT_COMMANDS:
        assert (ROOT / name).is_file(), name
    for command in EXPECTED_STATUS:
        assert command in TO_RUN, f"EXPECTED_STATUS names {command!r}, which no document shows any more"


@pytest.mark.parametrize("command", TO_RUN)
def test_documented_command_runs_as_written(command: str) -> None:
    if not (VENV / "bin" / "python").exists():
        pytest.fail("no .venv: run ./scripts/dev.sh or ./scripts/test.sh once (the docs assume it)")
    result = run(command)
    expected = EXPECTED_STATUS.get(command, 0)
    where = ", ".join(COMMANDS[command].places)
    assert result.returncode == expected, (
        f"{command!r} ({where}) exited {result.returncode}, expected {expected}\n"
        f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
    )
    assert "Traceback" not in result.stderr, result.stderr


def test_entrypoint_finds_the_virtualenv_without_a_python_on_path() -> None:
    """The README's DRY_RUN line from a shell whose PATH has no python at all (nor the virtualenv's):
    the entrypoint uses the checkout's .venv, as it would after ./scripts/dev.sh."""
    command = "DRY_RUN=1 SERVICE_TYPE=api backend/scripts/railway_entrypoint.sh"
    assert command in TO_RUN
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("python -m app.api.server app.main:app --host 0.0.0.0 --port 8000 "), (
        result.stdout
    )


# Relative links: [text](path), ![alt](path), [text](path#anchor), and [label]: path definitions.
INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)


def links(path: Path) -> list[tuple[int, str]]:
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text(encoding="utf-8"))
    text = SPAN.sub(lambda m: " " * len(m.group(0)), text)  # `[x](y)` in code is an example
    found = []
    for pattern in (INLINE_LINK, DEFINITION):
        for match in pattern.finditer(text):
            found.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(document: Path) -> None:
    broken = []
    for line, target in links(document):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # http(s), mailto: not ours to check; #anchor: this document
        path = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (ROOT / path.lstrip("/")) if path.startswith("/") else (document.parent / unquote(path))
        if not resolved.exists():
            broken.append(f"{document.relative_to(ROOT)}:{line}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_links_are_found() -> None:
    """The link pattern still sees the README's link to the guide and the benchmark image."""
    assert any(t == "docs/connection-pool-guide.md" for _, t in links(ROOT / "README.md"))
    assert any(t == "benchmarks/load-full.png" for _, t in links(ROOT / "docs" / "benchmarks.md"))
