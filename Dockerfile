# One image for all four services; SERVICE_TYPE picks which one runs (backend/scripts/railway_entrypoint.sh).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Non-root: the services need no privilege, and a compromised worker should not own the container.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app

WORKDIR /app/backend
# Dependencies first, so code changes do not reinstall them: the runtime set of backend/uv.lock (no
# extras), every file hash-checked, nothing resolved, so the image holds what CI tested. uv, at the version
# and hashes the same lock pins, exports and installs it, then leaves the image. The backend itself is
# not installed: it runs from source (PYTHONPATH below).
COPY backend/pyproject.toml backend/uv.lock ./
RUN python -c 'import tomllib; lock = tomllib.load(open("uv.lock", "rb")); \
uv = next(p for p in lock["package"] if p["name"] == "uv"); \
print("uv==" + uv["version"], *["--hash=" + w["hash"] for w in uv["wheels"]])' > /tmp/uv.txt \
 && pip install --require-hashes --no-deps -r /tmp/uv.txt \
 && uv export --frozen --no-emit-project --format requirements.txt -o /tmp/requirements.txt \
 && uv pip install --system --no-cache --require-hashes -r /tmp/requirements.txt \
 && pip uninstall -y uv && rm /tmp/uv.txt /tmp/requirements.txt
COPY --chown=app:app backend/ ./
# Run from source (alembic.ini and migrations/ sit beside the package).
ENV PYTHONPATH=/app/backend

USER app
EXPOSE 8000
ENTRYPOINT ["scripts/railway_entrypoint.sh"]
