#!/usr/bin/env bash
# Starts the service named by SERVICE_TYPE (Railway: one service per SERVICE_TYPE, same image).
#
#   SERVICE_TYPE=api|celery_logs|celery_content|celery_workflow  backend/scripts/railway_entrypoint.sh
#   DRY_RUN=1 ...   prints the one command line it would exec, and exits 0
#
# Defaults are the production topology (Aliyun RDS, 280 of 400 connections, 10 per process).
# Development sets the smaller values through .env.development (see .env.development.example).
set -euo pipefail
cd "$(dirname "$0")/.."

VALID="api, celery_logs, celery_content, celery_workflow"
CELERY="celery -A app.core.celery_app worker --loglevel=${CELERY_LOGLEVEL:-INFO}"

case "${SERVICE_TYPE:-}" in
  api)
    # 默认生产环境配置（阿里云）: production default (Aliyun) 8 workers; development sets 4.
    # Behind Railway's proxy set FORWARDED_ALLOW_IPS (uvicorn reads it) to trust X-Forwarded-For.
    cmd=(uvicorn app.main:app --host 0.0.0.0 --port "${PORT:-8000}" --workers "${UVICORN_WORKERS:-8}")
    ;;
  celery_logs)
    # production default (Aliyun) 8 children; development sets 4.
    cmd=($CELERY --queues=logs --concurrency="${CELERY_LOGS_CONCURRENCY:-8}" --hostname="logs@%h")
    ;;
  celery_content)
    # production default (Aliyun) 10 children; development sets 6.
    cmd=($CELERY --queues=content_generation --concurrency="${CELERY_CONTENT_CONCURRENCY:-10}"
         --hostname="content@%h")
    ;;
  celery_workflow)
    # production default (Aliyun) 6 children; development sets 4.
    cmd=($CELERY --queues=roadmap_workflow --concurrency="${CELERY_WORKFLOW_CONCURRENCY:-6}"
         --hostname="workflow@%h")
    ;;
  "")
    echo "railway_entrypoint: SERVICE_TYPE is not set; valid values: $VALID" >&2
    exit 64
    ;;
  *)
    echo "railway_entrypoint: unknown SERVICE_TYPE '${SERVICE_TYPE}'; valid values: $VALID" >&2
    exit 64
    ;;
esac

if [ "${DRY_RUN:-0}" = "1" ]; then
  printf '%s\n' "${cmd[*]}"
  exit 0
fi

# One prometheus multiprocess folder per container, emptied at start: files of a previous run's
# processes would otherwise be summed into this one's gauges.
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus-${SERVICE_TYPE}}"
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

# The connection budget, checked once per service start: DB_BUDGET_ENFORCEMENT=strict refuses an
# over-allocated topology here with one line naming the variables; warn logs it once.
python -m app.budget --guard --service "$SERVICE_TYPE"
export DB_BUDGET_CHECKED=1

if [ "$SERVICE_TYPE" = "api" ] && [ "${RUN_MIGRATIONS:-1}" = "1" ]; then
  scripts/prestart.sh
fi

# exec: the server becomes PID 1's child directly, so SIGTERM from the platform reaches it.
exec "${cmd[@]}"
