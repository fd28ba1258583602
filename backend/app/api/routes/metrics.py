"""``GET /metrics``: Prometheus text, aggregated over every uvicorn worker of this service."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.core.metrics import render_latest

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    # Sync on purpose: reading the per-process files is blocking I/O, FastAPI runs it in a thread.
    body, content_type = render_latest()
    return Response(content=body, media_type=content_type)
