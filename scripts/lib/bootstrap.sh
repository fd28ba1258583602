# Sourced by scripts/dev.sh and scripts/test.sh: a virtualenv in .venv with the backend installed.
# Re-installs only when backend/pyproject.toml changed, so the second run starts in a second.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "[bootstrap] creating $ROOT/.venv" >&2
  "$PYTHON" -m venv "$ROOT/.venv"
fi
# shellcheck disable=SC1091
. "$ROOT/.venv/bin/activate"
stamp="$ROOT/.venv/.installed-$(sha1sum "$ROOT/backend/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing backend with its dev and local extras" >&2
  python -m pip install --quiet --disable-pip-version-check --upgrade pip
  python -m pip install --quiet --disable-pip-version-check -e "$ROOT/backend[dev,local]"
  rm -f "$ROOT"/.venv/.installed-*
  touch "$stamp"
fi
