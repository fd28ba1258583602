#!/usr/bin/env bash
# First command: set up and run the stack locally (development topology).
#
#   ./scripts/dev.sh
#
# Uses PostgreSQL and Redis at the URLs in .env.development when they answer; otherwise starts embedded
# ones under .data/ (stopped again when this script exits). Migrates, then runs the API on
# http://127.0.0.1:${PORT:-8000} (health: /health, metrics: /metrics). Ctrl-C stops everything.
# One run per checkout: a second one is refused while the first is running (.data/dev.pid).
set -euo pipefail
cd "$(dirname "$0")/.."
# One run per checkout: a second would empty this run's metrics directories and stop its servers.
# shellcheck source=lib/single_run.sh
. scripts/lib/single_run.sh
RUN_PIDFILE="$PWD/.data/dev.pid"
claim_single_run "$RUN_PIDFILE" dev.sh
trap 'release_single_run "$RUN_PIDFILE"' EXIT
# shellcheck source=lib/bootstrap.sh
. scripts/lib/bootstrap.sh

fresh=""
[ -f .env.development ] || { cp .env.development.example .env.development; echo "[dev] created .env.development"; fresh=--fresh; }
set -a
# shellcheck disable=SC1091
. ./.env.development
set +a
# This checkout's own database, Redis database and API port: another checkout's stack on this machine
# keeps its own (scripts/dev_stacks.py chooses free ones for a new env file, or refuses naming them).
ports=$(python scripts/dev_stacks.py claim $fresh)
set -a
# shellcheck disable=SC1091
. ./.env.development
set +a
export "${ports?}"

python scripts/local_services.py ensure
# shellcheck disable=SC1091
. .data/services.env

# Job control: every service runs in its own process group, so one signal stops all of its processes.
set -m
children=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${children[@]}" ${waiter:+"$waiter"}; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  python scripts/local_services.py stop
  release_single_run "$RUN_PIDFILE"
}
trap cleanup EXIT INT TERM

backend/scripts/prestart.sh
# The budget guard once for the whole stack (the services skip it when this is set).
(cd backend && python -m app.budget --guard --service dev-stack)
export DB_BUDGET_CHECKED=1

# Each service exactly as in production (railway_entrypoint.sh), with the development values from
# .env.development, its output prefixed with its name. The API binds to loopback only. A service that
# exits with an error is started again, as Railway's ON_FAILURE policy does in production
# (.railway/railway.py: at most 10 times): one worker that dies (a crash, an OOM kill) no longer
# takes the others down with it. One that still fails after that stops the stack, as before.
MAX_RESTARTS=10
start() {
  local service=$1
  local prom="$PWD/.data/prometheus/$service"
  (
    cd backend
    cmd=$(SERVICE_TYPE=$service DRY_RUN=1 scripts/railway_entrypoint.sh)
    [ "$service" = api ] && cmd=${cmd/--host 0.0.0.0/--host 127.0.0.1}
    # Deferred by bash until the running service has stopped: then leave, do not restart it.
    stopping=0
    trap 'stopping=1' INT TERM
    restarts=0
    while :; do
      rm -rf "$prom" && mkdir -p "$prom"  # a new process set: no gauges of the dead one
      set +e
      # The prefixer ignores the stop signal sent to the whole group: it must outlive the service
      # to carry its last lines, or the service's shutdown meets a broken pipe and never ends.
      # shellcheck disable=SC2086
      SERVICE_TYPE=$service PROMETHEUS_MULTIPROC_DIR=$prom $cmd 2>&1 \
        | (trap '' INT TERM; exec sed -u "s/^/$(printf '%-18s' "[$service]")/")
      status=${PIPESTATUS[0]}
      set -e
      if [ "$stopping" = 1 ] || [ "$status" = 0 ] || [ "$restarts" -ge "$MAX_RESTARTS" ]; then
        exit "$status"
      fi
      restarts=$((restarts + 1))
      echo "[dev] $service exited with status $status; starting it again ($restarts/$MAX_RESTARTS)"
      sleep 1
    done
  ) &
  children+=("$!")
}
# Every service of the topology (backend/app/topology.py), the API first.
for service in $(cd backend && python -c 'from app.topology import NAMES; print(*NAMES)'); do start "$service"; done
# The URL once /health answers, not when the API was merely started.
(
  url="http://127.0.0.1:$PORT"
  if python - "$url/health" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
            sys.exit(0 if response.status == 200 else 1)
    except OSError:
        time.sleep(0.25)
sys.exit(1)
PY
  then echo "[dev] API on $url  (curl $url/health); Ctrl-C stops all"
  else echo "[dev] the API did not answer $url/health within 120 s: see its lines above"
  fi
) &
waiter=$!
# Returns when a service has exited for good (cleanly, or failing after its last restart).
wait -n "${children[@]}"
