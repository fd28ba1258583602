# One image for all four services; SERVICE_TYPE picks which one runs (backend/scripts/railway_entrypoint.sh).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Non-root: the services need no privilege, and a compromised worker should not own the container.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app

WORKDIR /app/backend
# Dependencies first, so code changes do not reinstall them.
COPY backend/pyproject.toml ./
RUN mkdir app && touch app/__init__.py && pip install . && pip uninstall -y roadmap-backend && rm -rf app build
COPY --chown=app:app backend/ ./
# Run from source (alembic.ini and migrations/ sit beside the package).
ENV PYTHONPATH=/app/backend

USER app
EXPOSE 8000
ENTRYPOINT ["scripts/railway_entrypoint.sh"]
