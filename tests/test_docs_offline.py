"""/docs and /redoc render with no network: their assets come from the app, not from a CDN."""

from __future__ import annotations

import os

import pytest

from devkit.api import running_api
from devkit.ports import free_port
from tests.support.browser import rendered_dom
from tests.support.env import BASE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("migrated_database")]


def test_swagger_ui_and_redoc_render_offline() -> None:
    with running_api({**os.environ, **BASE_ENV}, free_port()) as base:
        swagger = rendered_dom(f"{base}/docs")
        redoc = rendered_dom(f"{base}/redoc")
    # Swagger UI built its page from the app's own schema: the operations are there.
    assert 'class="swagger-ui"' in swagger and "opblock" in swagger, swagger[:2000]
    assert "/api/v1/roadmaps" in swagger and "cdn.jsdelivr.net" not in swagger
    # ReDoc rendered the API's title and its operations.
    assert "roadmap-backend" in redoc and "/api/v1/roadmaps" in redoc, redoc[:2000]
    assert "cdn.jsdelivr.net" not in redoc
