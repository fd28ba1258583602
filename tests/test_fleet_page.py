"""/admin/fleet in headless Chromium against a running API: the numbers follow pg_stat_activity."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from devkit.api import running_api
from devkit.ports import free_port
from tests.support.auth import auth
from tests.support.browser import OFFLINE
from tests.support.env import BASE_ENV, TEST_DB
from tests.support.system_tools import require

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("migrated_database")]

SERVICE = "celery_logs"
APPLICATION_NAME = f"test.{SERVICE}"  # <environment>.<service>: what the audit charges to the service


@pytest.fixture
def api() -> Iterator[str]:
    with running_api({**os.environ, **BASE_ENV}, free_port()) as base:
        yield base


# Plain psycopg (sync): Playwright's sync API already runs an event loop in this thread.
def server_counts() -> tuple[int, int]:
    """What pg_stat_activity shows for the service: open, and doing something (not idle)."""
    with psycopg.connect(BASE_ENV["DATABASE_URL"], autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE state <> 'idle')"
            " FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
            (APPLICATION_NAME, TEST_DB),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_the_fleet_page_follows_pg_stat_activity(api: str) -> None:
    from playwright.sync_api import sync_playwright

    token = auth("admin")["Authorization"].removeprefix("Bearer ")
    held: list[psycopg.Connection] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=require("chromium", "chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", f"--host-resolver-rules={OFFLINE}"],
        )  # fmt: skip
        try:
            page = browser.new_page()
            # The token in the fragment becomes an HttpOnly cookie, and leaves the address bar.
            page.goto(f"{api}/admin/fleet#token={token}")
            cell = f'tr[data-service="{SERVICE}"] td[data-field="%s"]'
            page.wait_for_selector(cell % "open", timeout=15_000)
            assert "#token" not in page.url
            before = int(page.inner_text(cell % "open"))
            assert before == server_counts()[0]
            # The service now holds three connections, one of them inside a transaction.
            for _ in range(3):
                held.append(psycopg.connect(BASE_ENV["DATABASE_URL"], application_name=APPLICATION_NAME))
            held[0].execute("SELECT 1")  # psycopg opened a transaction: idle in transaction, in use
            expected = server_counts()
            assert expected == (before + 3, 1)
            # The page refreshes every 2 s by itself: wait for it, no reload.
            deadline = time.monotonic() + 15
            shown = (before, 0)
            while time.monotonic() < deadline and shown != expected:
                page.wait_for_timeout(500)
                shown = (int(page.inner_text(cell % "open")), int(page.inner_text(cell % "in_use")))
            assert shown == expected
            budget = int(page.inner_text(cell % "budget"))
            assert budget > 0 and page.inner_text("#allocation").startswith("120")
            # The chart has drawn the history, one polygon per service.
            assert page.locator("#chart polygon").count() == 4
        finally:
            browser.close()
            for conn in held:
                conn.close()


def test_the_fleet_data_is_for_admins_only(api: str) -> None:
    with httpx.Client(base_url=api, timeout=10) as http:
        assert http.get("/admin/fleet/data").status_code == 401
        assert http.get("/admin/fleet/data", headers=auth("user")).status_code == 403
        assert http.get("/admin/fleet/data", headers=auth("admin")).status_code == 200
        user = auth("user")["Authorization"].removeprefix("Bearer ")
        assert http.post("/admin/fleet/session", json={"token": user}).status_code == 403
        assert http.post("/admin/fleet/session", json={"token": "not-a-token"}).status_code == 401
        admin = auth("admin")["Authorization"].removeprefix("Bearer ")
        minted = http.post("/admin/fleet/session", json={"token": admin})
        assert minted.status_code == 200
        cookie = minted.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
        # The page itself holds no data; the cookie alone now reads it.
        assert 'fetch("/admin/fleet/data"' in http.get("/admin/fleet").text
        assert http.get("/admin/fleet/data").status_code == 200
