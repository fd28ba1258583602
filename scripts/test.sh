#!/usr/bin/env bash
# Second command: install and run the whole test suite.
#
#   ./scripts/test.sh [pytest args]
#
# Tests need a PostgreSQL server on which they may create databases, and a Redis:
# TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres) and TEST_REDIS_URL
# (default redis://127.0.0.1:6379/15). When nothing answers there, embedded servers are started under
# .data/test/ and stopped afterwards. Each test session works in its own database, dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/bootstrap.sh
. scripts/lib/bootstrap.sh

# System programs a few tests use (pgbouncer, promtool, wrk, haproxy, chromium): installed from Debian
# packages when we may; otherwise those tests skip and say why (CI sets REQUIRE_SYSTEM_TOOLS=1, turning
# that into a failure).
missing=()
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing ${missing[*]} (Debian packages)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "[test] not installed: ${missing[*]} (apt-get install ${missing[*]}); their tests will skip" >&2
  fi
fi

export LOCAL_DATA_DIR="$PWD/.data/test"
DATABASE_URL="${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}" \
REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}" \
  python scripts/local_services.py ensure
# shellcheck disable=SC1091
. "$LOCAL_DATA_DIR/services.env"
export TEST_DATABASE_URL="$DATABASE_URL" TEST_REDIS_URL="$REDIS_URL"
unset DATABASE_URL REDIS_URL
trap 'python scripts/local_services.py stop' EXIT

ruff check backend tests scripts
python -m pytest "$@"
