#!/usr/bin/env bash
# Starts one replica of the service named by SERVICE_TYPE (or the first argument). One image, one
# Railway service per SERVICE_TYPE; the services are declared in app/topology.py.
#
#   SERVICE_TYPE=api|celery_logs|celery_content|celery_workflow  backend/scripts/railway_entrypoint.sh
#   backend/scripts/railway_entrypoint.sh celery_content      # the same, as .railway/railway.py starts it
#   DRY_RUN=1 ...   prints the one command line it would exec, and exits 0
#
# The command comes from the settings (python -m app.start_commands), the same plan the connection
# budget counts: production defaults, ENVIRONMENT=development for the development profile, any
# variable set explicitly wins. No defaults live in this file.
set -euo pipefail
cd "$(dirname "$0")/.."
# Run from a checkout, the project's virtualenv (./scripts/dev.sh creates .venv) provides python,
# uvicorn and celery even in a shell that has not activated it; the image has none and uses its PATH.
if [ -x ../.venv/bin/python ]; then
  PATH="$(cd .. && pwd)/.venv/bin:$PATH"
  export PATH
fi

export SERVICE_TYPE="${1:-${SERVICE_TYPE:-}}"

# The command to run, e.g. `celery -A app.core.celery_app worker ...`; exit 64 for an unknown service.
line=$(python -m app.start_commands "$SERVICE_TYPE")
if [ "${DRY_RUN:-0}" = "1" ]; then
  printf '%s\n' "$line"
  exit 0
fi
eval "cmd=($line)"

# The connection budget, checked once per service start against the allocation and the server's own
# max_connections: DB_BUDGET_ENFORCEMENT=strict refuses here with one line naming the variables; warn
# logs it once.
env -u PROMETHEUS_MULTIPROC_DIR python -m app.budget --guard --service "$SERVICE_TYPE"
export DB_BUDGET_CHECKED=1

# One prometheus multiprocess folder per container, emptied at start: files of a previous run's
# processes would otherwise be summed into this one's gauges.
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus-${SERVICE_TYPE}}"
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

# The API migrates before serving unless the deploy already did (Railway's preDeployCommand sets
# RUN_MIGRATIONS=0 in deploy/railway/api.json, compose has its migrate service, dev.sh migrates first).
# Replicas starting together are safe: prestart holds an advisory lock, so the migration runs once.
if [ "$SERVICE_TYPE" = "api" ] && [ "${RUN_MIGRATIONS:-1}" = "1" ]; then
  scripts/prestart.sh
fi

# exec: the server becomes PID 1's child directly, so SIGTERM from the platform reaches it.
exec "${cmd[@]}"
