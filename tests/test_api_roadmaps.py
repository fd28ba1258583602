"""The roadmap and admin API: auth, validation, pagination, masked keys (no worker needed)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import auth


async def test_writes_need_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/roadmaps", json={"topic": "Rust"})
    assert response.status_code == 401
    assert response.json()["detail"] == "a bearer token is required"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    bad = await client.post("/api/v1/roadmaps", json={"topic": "Rust"}, headers={"Authorization": "Bearer x"})
    assert bad.status_code == 401 and bad.json()["detail"] == "invalid token"


async def test_expired_token_is_401(client: httpx.AsyncClient) -> None:
    from app.core.security import create_token

    token = create_token("old", "user", expires_minutes=-1)
    response = await client.get("/api/v1/admin/tavily-keys", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json()["detail"] == "token expired"


async def test_admin_routes_need_the_admin_role(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/admin/tavily-keys", headers=auth("user"))
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "topic"),
        ({"topic": " "}, "topic"),
        ({"topic": "Go", "concept_count": 0}, "concept_count"),
        ({"topic": "Go", "concept_count": 61}, "concept_count"),
        ({"topic": "Go", "colour": "red"}, "colour"),
    ],
)
async def test_validation_errors_name_the_field(client: httpx.AsyncClient, body: dict, field: str) -> None:
    response = await client.post("/api/v1/roadmaps", json=body, headers=auth())
    assert response.status_code == 422
    assert any(field in error["loc"] for error in response.json()["detail"]), response.json()


async def test_create_read_and_list(client: httpx.AsyncClient, test_db: object) -> None:
    created = await client.post("/api/v1/roadmaps", json={"topic": "  PostgreSQL   pooling "}, headers=auth())
    assert created.status_code == 202
    roadmap_id = created.json()["id"]
    assert created.json()["status"] == "pending"
    one = await client.get(f"/api/v1/roadmaps/{roadmap_id}")
    assert one.status_code == 200
    body = one.json()
    assert body["topic"] == "PostgreSQL pooling"
    assert body["requested_concepts"] == 30 and body["concepts"] == [] and body["concept_status"] == {}
    # the workflow task really is on its queue
    row = await test_db.fetchval("SELECT owner FROM roadmaps WHERE id = $1", uuid.UUID(roadmap_id))  # type: ignore[attr-defined]
    assert row == "tester"
    page = await client.get("/api/v1/roadmaps", params={"limit": 1, "offset": 0})
    assert page.status_code == 200
    assert page.json()["limit"] == 1 and len(page.json()["items"]) == 1 and page.json()["total"] >= 1
    assert (await client.get("/api/v1/roadmaps", params={"limit": 101})).status_code == 422
    missing = await client.get(f"/api/v1/roadmaps/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert (await client.get("/api/v1/roadmaps/not-a-uuid")).status_code == 422


async def test_tavily_keys_are_masked_and_manageable(client: httpx.AsyncClient) -> None:
    secret = f"tvly-{uuid.uuid4().hex}"
    added = await client.post(
        "/api/v1/admin/tavily-keys", json={"api_key": secret, "remaining_credits": 5}, headers=auth("admin")
    )
    assert added.status_code == 201
    assert secret not in added.text
    assert added.json()["api_key"] == f"{secret[:4]}…{secret[-4:]}"
    key_id = added.json()["id"]
    dup = await client.post("/api/v1/admin/tavily-keys", json={"api_key": secret}, headers=auth("admin"))
    assert dup.status_code == 409
    listed = await client.get("/api/v1/admin/tavily-keys", headers=auth("admin"))
    assert listed.status_code == 200 and secret not in listed.text
    assert any(k["id"] == key_id and k["remaining_credits"] == 5 for k in listed.json())
    disabled = await client.post(f"/api/v1/admin/tavily-keys/{key_id}/disable", headers=auth("admin"))
    assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"
    assert (
        await client.post("/api/v1/admin/tavily-keys/999999/disable", headers=auth("admin"))
    ).status_code == 404
