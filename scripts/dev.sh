#!/usr/bin/env bash
# First command: set up and run the stack locally (development topology).
#
#   ./scripts/dev.sh
#
# Uses PostgreSQL and Redis at the URLs in .env.development when they answer; otherwise starts embedded
# ones under .data/ (stopped again when this script exits). Migrates, then runs the API on
# http://127.0.0.1:${PORT:-8000} (health: /health, metrics: /metrics). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/bootstrap.sh
. scripts/lib/bootstrap.sh

[ -f .env.development ] || { cp .env.development.example .env.development; echo "[dev] created .env.development"; }
set -a
# shellcheck disable=SC1091
. ./.env.development
set +a

python scripts/local_services.py ensure
# shellcheck disable=SC1091
. .data/services.env

children=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  python scripts/local_services.py stop
}
trap cleanup EXIT INT TERM

backend/scripts/prestart.sh

# One multiprocess folder per service, emptied at start: stale files from a previous run would count.
export PROMETHEUS_MULTIPROC_DIR="$PWD/.data/prometheus/api"
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
(cd backend && exec uvicorn app.main:app --host 127.0.0.1 --port "${PORT:-8000}" \
  --workers "${UVICORN_WORKERS:-4}" --no-access-log) &
children+=("$!")
echo "[dev] API on http://127.0.0.1:${PORT:-8000}  (curl http://127.0.0.1:${PORT:-8000}/health)"
wait -n "${children[@]}"
