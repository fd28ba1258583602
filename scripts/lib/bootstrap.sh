# Sourced by scripts/dev.sh and scripts/test.sh: a virtualenv in .venv holding exactly what
# backend/uv.lock pins (every file hash-checked) for the backend with its dev and local extras, and the
# backend itself (editable). Nothing is resolved at install time: the lock is the tested set.
# Re-installs only when backend/pyproject.toml, backend/uv.lock or this file changed, so the second run
# starts in a second.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  # The lock covers every Python the project accepts (requires-python >= 3.11), not older ones.
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    found=$("$PYTHON" -c 'import sys; print("Python", sys.version.split()[0])' 2>/dev/null || echo "not runnable")
    echo "[bootstrap] needs Python >= 3.11 (backend/pyproject.toml requires-python), $PYTHON is $found: run with PYTHON=python3.11" >&2
    exit 1
  fi
  echo "[bootstrap] creating $ROOT/.venv" >&2
  "$PYTHON" -m venv "$ROOT/.venv"
fi
# shellcheck disable=SC1091
. "$ROOT/.venv/bin/activate"
stamp="$ROOT/.venv/.installed-$(cat "$ROOT/backend/pyproject.toml" "$ROOT/backend/uv.lock" \
  "${BASH_SOURCE[0]}" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing backend/uv.lock (hash-checked) with the dev and local extras" >&2
  # uv itself first, with pip: the version and file hashes backend/uv.lock pins for it.
  python - "$ROOT/backend/uv.lock" >"$ROOT/.venv/uv-requirement.txt" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    (uv,) = [p for p in tomllib.load(f)["package"] if p["name"] == "uv"]
files = [*uv.get("wheels", []), *([uv["sdist"]] if "sdist" in uv else [])]
print(f"uv=={uv['version']}", *(f"--hash={f['hash']}" for f in files))
EOF
  python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
    -r "$ROOT/.venv/uv-requirement.txt"
  # A pyproject.toml edited without re-locking is refused, not resolved afresh.
  if ! out=$(UV_PYTHON_DOWNLOADS=never uv lock --check --offline --project "$ROOT/backend" 2>&1); then
    echo "[bootstrap] backend/uv.lock does not match backend/pyproject.toml: run .venv/bin/uv lock --project backend, then commit both ($(grep -m1 '^error' <<<"$out"))" >&2
    exit 1
  fi
  # Exactly the lock (packages it does not list are removed), the backend editable, no resolution.
  UV_PROJECT_ENVIRONMENT="$ROOT/.venv" UV_PYTHON_DOWNLOADS=never \
    uv sync --quiet --frozen --project "$ROOT/backend" --extra dev --extra local
  rm -f "$ROOT"/.venv/.installed-*
  touch "$stamp"
fi
