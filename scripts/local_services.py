#!/usr/bin/env python3
"""Find PostgreSQL and Redis at the configured URLs, or start embedded ones under ``.data/``
(devkit.local_services).

    python scripts/local_services.py ensure   # prints nothing but progress; writes .data/services.env
    python scripts/local_services.py stop     # stops only what this script started

The URLs actually used are written to ``.data/services.env`` for the calling script to source.
"""

from __future__ import annotations

import argparse

from devkit import local_services


def ensure() -> None:
    local_services.DATA.mkdir(parents=True, exist_ok=True)
    database_url = local_services.ensure_postgres()
    redis_url = local_services.ensure_redis()
    services_env = local_services.DATA / "services.env"
    services_env.write_text(
        "# written by scripts/local_services.py: the services this checkout uses\n"
        f"export DATABASE_URL='{database_url}'\nexport REDIS_URL='{redis_url}'\n"
    )
    services_env.chmod(0o600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=["ensure", "stop"])
    args = parser.parse_args()
    ensure() if args.command == "ensure" else local_services.stop()


if __name__ == "__main__":
    main()
