#!/usr/bin/env python3
"""Which database, Redis database and API port each checkout's development stack uses, machine-wide.

    python scripts/dev_stacks.py claim [--fresh] [--env-file .env.development]

Two checkouts on one machine read the same `.env.development.example`: without this, the second
stack's API fails with "Address already in use" and, worse, its workers consume the first stack's
Redis queues and write into its database. So every checkout that runs `dev.sh` registers what it uses
in `$XDG_STATE_HOME/roadmap-backend/dev-stacks.json` (default `~/.local/state/...`), and `claim`:

* with `--fresh` (dev.sh just created this checkout's env file): when the configured database, Redis
  database or port belongs to another checkout, picks the first free ones, writes them at the end of
  the env file and says so;
* otherwise refuses at once, naming the other checkout and the exact variables to set;
* in both cases picks another port when the configured one is taken by some other program and PORT was
  not set explicitly.

On stdout it prints the shell assignments dev.sh evaluates (`PORT=...`); messages go to stderr. A
checkout whose folder no longer exists is forgotten.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from app.config import connections
from app.config.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"localhost", "127.0.0.1", "::1", ""}
REDIS_DATABASES = 16  # redis-server's default `databases`


def registry_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "roadmap-backend" / "dev-stacks.json"


def say(message: str) -> None:
    print(f"[dev] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked_registry() -> Iterator[dict[str, dict[str, object]]]:
    """The registry, read and written under an exclusive lock (two dev.sh may start together)."""
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stacks: dict[str, dict[str, object]] = json.loads(path.read_text()) if path.exists() else {}
        stacks = {checkout: used for checkout, used in stacks.items() if Path(checkout).is_dir()}
        yield stacks
        path.write_text(json.dumps(stacks, indent=2, sort_keys=True) + "\n")


def _host(host: str | None) -> str:
    return "local" if (host or "") in LOCAL else str(host)


def database_of(env: dict[str, str]) -> tuple[str, str]:
    """(server, database name) the settings connect to, as the registry keys them."""
    parts = urlsplit(connections.database_conninfo(Settings.from_mapping(env)))
    return f"{_host(parts.hostname)}:{parts.port or 5432}", unquote(parts.path.lstrip("/")) or "postgres"


def redis_of(env: dict[str, str]) -> tuple[str, int]:
    parts = urlsplit(env.get("REDIS_URL", "redis://localhost:6379/0"))
    index = parts.path.lstrip("/")
    return f"{_host(parts.hostname)}:{parts.port or 6379}", int(index) if index.isdigit() else 0


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def claim(checkout: str, env: dict[str, str], env_file: Path, fresh: bool) -> dict[str, str]:
    """Register what ``checkout`` uses; returns the variables dev.sh must export (PORT)."""
    port_set = "PORT" in env
    port = int(env.get("PORT", "8000"))
    with locked_registry() as stacks:
        others = {c: used for c, used in stacks.items() if c != checkout}
        database, redis = database_of(env), redis_of(env)
        taken_db = {(str(u["server"]), str(u["database"])): c for c, u in others.items()}
        taken_redis = {(str(u["redis_server"]), int(str(u["redis_db"]))): c for c, u in others.items()}
        taken_port = {int(str(u["port"])): c for c, u in others.items()}
        clash = [
            (what, owner)
            for what, owner in (
                (f"database {database[1]}", taken_db.get(database)),
                (f"Redis database {redis[1]}", taken_redis.get(redis)),
                (f"API port {port}", taken_port.get(port)),
            )
            if owner
        ]
        changes: dict[str, str] = {}
        if clash and not fresh:
            owner = clash[0][1]
            name = _free_name(database[1], {db for (server, db) in taken_db if server == database[0]})
            index = _free_index({n for (server, n) in taken_redis if server == redis[0]})
            shared = ", ".join(what for what, _ in clash)
            fix = (
                f"{_db_variable(env, name)} REDIS_URL={_redis_url(env, index)} PORT={_free_port(taken_port)}"
            )
            raise SystemExit(
                f"[dev] this checkout would share {shared} with the stack of {owner}: "
                f"set {_masked(fix)} in {env_file.name} (or run from that checkout)"
            )
        if taken_db.get(database):
            name = _free_name(database[1], {db for (server, db) in taken_db if server == database[0]})
            changes |= dict([_db_variable(env, name).split("=", 1)])
            database = (database[0], name)
        if taken_redis.get(redis):
            index = _free_index({n for (server, n) in taken_redis if server == redis[0]})
            changes["REDIS_URL"] = _redis_url(env, index)
            redis = (redis[0], index)
        if taken_port.get(port) or (listening(port) and not port_set):
            port = _free_port(taken_port)
            if fresh:
                changes["PORT"] = str(port)
        elif listening(port):
            raise SystemExit(f"[dev] port {port} is in use by another program: set PORT to a free port")
        if changes:
            with env_file.open("a") as out:
                out.write("\n# Chosen by scripts/dev.sh: another checkout's stack uses the defaults here.\n")
                out.writelines(f"{name}={value}\n" for name, value in changes.items())
            chosen = ", ".join(f"{name}={_masked(value)}" for name, value in changes.items())
            say(f"another checkout's stack is on this machine; this one uses {chosen} (in {env_file.name})")
        stacks[checkout] = {"server": database[0], "database": database[1], "redis_server": redis[0],
                            "redis_db": redis[1], "port": port}  # fmt: skip
    return {"PORT": str(port)}


def _masked(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``: these lines reach a terminal."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]+@", r"\1***@", text)


def _free_name(name: str, taken: set[str]) -> str:
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    return f"{name}_{n}"


def _free_index(taken: set[int]) -> int:
    free = [n for n in range(REDIS_DATABASES) if n not in taken]
    if not free:
        raise SystemExit(f"[dev] all {REDIS_DATABASES} Redis databases are taken by other checkouts")
    return free[0]


def _free_port(taken: dict[int, str]) -> int:
    port = 8000
    while port in taken or listening(port):
        port += 1
    return port


def _db_variable(env: dict[str, str], name: str) -> str:
    url = env.get("DATABASE_URL")
    if url:
        return f"DATABASE_URL={urlunsplit(urlsplit(url)._replace(path='/' + name))}"
    return f"POSTGRES_DB={name}"


def _redis_url(env: dict[str, str], index: int) -> str:
    return urlunsplit(urlsplit(env.get("REDIS_URL", "redis://localhost:6379/0"))._replace(path=f"/{index}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=["claim"])
    parser.add_argument("--fresh", action="store_true", help="the env file is new: choose, do not refuse")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env.development")
    args = parser.parse_args()
    # dev.sh has exported the env file and the shell's own variables: exactly what the services get.
    env = dict(os.environ)
    for name, value in claim(str(ROOT), env, args.env_file, args.fresh).items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
