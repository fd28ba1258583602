"""Celery tasks, one module per queue (routing is by module, see app.core.celery_app)."""
