"""``python -m app.start_commands SERVICE``: the command that starts one replica of a service.

backend/scripts/railway_entrypoint.sh execs what this prints, so the processes it starts are the ones
the budget counts: the API's uvicorn worker count is on its command line; a Celery worker's child count
is not, its parent takes it from the same plan when it starts (``app.worker.lifecycle``).
"""

from __future__ import annotations

import os
import shlex
import sys

from app import sizing, topology
from app.config.loading import InvalidSettingsError
from app.config.settings import Settings, get_settings

EXIT_USAGE = 64  # an unknown SERVICE_TYPE (sysexits EX_USAGE): railway_entrypoint.sh exits with it


def start_command(settings: Settings, name: str, *, port: str = "8000", loglevel: str = "INFO") -> list[str]:
    p = sizing.plan(settings, name)
    if not p.service.is_worker:
        # uvicorn with a supervisor that refuses new connections at SIGTERM (app.api.server), and an HTTP
        # protocol that bounds what a connection holds before its request is read (app.api.http_protocol).
        return [
            "python", "-m", "app.api.server", "app.main:app", "--host", "0.0.0.0", "--port", port,
            "--workers", str(p.processes),
            "--http", "app.api.http_protocol:BoundedHttpToolsProtocol",
            "--timeout-keep-alive", str(settings.API_KEEP_ALIVE_SECONDS),
            "--timeout-graceful-shutdown", str(sizing.api_graceful_shutdown_timeout(settings)),
        ]  # fmt: skip
    # Celery's SIGTERM is a warm shutdown that waits for every running task (up to its time limit, an
    # hour for a workflow); remapped to the cold one, it waits CELERY_SOFT_SHUTDOWN_TIMEOUT, then
    # hands the rest back. Read from the environment when Celery is imported, hence `env` here.
    return [
        "env", "REMAP_SIGTERM=SIGQUIT",
        "celery", "-A", "app.core.celery_app", "worker", f"--loglevel={loglevel}",
        f"--queues={p.service.queue}", f"--hostname={p.service.node}@%h",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if len(args) == 1 else ""
    if name not in topology.NAMES:
        problem = "is not set" if not name else f"'{name}' is unknown"
        print(f"SERVICE_TYPE {problem}; valid values: {', '.join(topology.NAMES)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = get_settings()
    except InvalidSettingsError as exc:
        print(exc, file=sys.stderr)
        return 1
    port = os.environ.get("PORT") or "8000"
    loglevel = os.environ.get("CELERY_LOGLEVEL") or "INFO"
    print(shlex.join(start_command(settings, name, port=port, loglevel=loglevel)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
