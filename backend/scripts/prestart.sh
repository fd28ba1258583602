#!/usr/bin/env bash
# Wait for PostgreSQL and migrate to head. Run once per deploy, before the API starts serving.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m app.db.prestart "$@"
