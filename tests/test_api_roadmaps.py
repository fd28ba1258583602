"""The roadmap and admin API: auth, validation, pagination, masked keys (no worker needed)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.auth import auth

pytestmark = pytest.mark.usefixtures("migrated_database")


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
    one = await client.get(f"/api/v1/roadmaps/{roadmap_id}", headers=auth())
    assert one.status_code == 200
    body = one.json()
    assert body["topic"] == "PostgreSQL pooling"
    assert body["requested_concepts"] == 30 and body["concepts"] == [] and body["concept_status"] == {}
    # the workflow task really is on its queue
    row = await test_db.fetchval("SELECT owner FROM roadmaps WHERE id = $1", uuid.UUID(roadmap_id))  # type: ignore[attr-defined]
    assert row == "tester"
    page = await client.get("/api/v1/roadmaps", params={"limit": 1, "offset": 0}, headers=auth())
    assert page.status_code == 200
    assert page.json()["limit"] == 1 and len(page.json()["items"]) == 1 and page.json()["total"] >= 1
    assert (await client.get("/api/v1/roadmaps", params={"limit": 101}, headers=auth())).status_code == 422
    missing = await client.get(f"/api/v1/roadmaps/{uuid.uuid4()}", headers=auth())
    assert missing.status_code == 404
    assert (await client.get("/api/v1/roadmaps/not-a-uuid", headers=auth())).status_code == 422


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


@pytest.mark.parametrize(
    "path", ["/api/v1/roadmaps", f"/api/v1/roadmaps/{uuid.uuid4()}", "/api/v1/task-logs"]
)
async def test_reads_need_a_token(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_users_read_only_their_own_roadmaps(client: httpx.AsyncClient) -> None:
    """OWASP API1: an id is not a permission. Bob cannot read Alice's roadmap, not even learn it exists,
    and his list holds his own only; an admin reads both."""
    # Subjects unique to this test: the session's database holds other tests' roadmaps too.
    alice, bob = auth(subject=f"alice-{uuid.uuid4().hex[:8]}"), auth(subject=f"bob-{uuid.uuid4().hex[:8]}")
    topic = f"Alice's secret plan {uuid.uuid4().hex[:8]}"
    created = await client.post("/api/v1/roadmaps", json={"topic": topic}, headers=alice)
    assert created.status_code == 202
    alice_id = created.json()["id"]
    bob_created = await client.post("/api/v1/roadmaps", json={"topic": "Bob's plan"}, headers=bob)
    bob_id = bob_created.json()["id"]

    theirs = await client.get(f"/api/v1/roadmaps/{alice_id}", headers=bob)
    missing = await client.get(f"/api/v1/roadmaps/{uuid.uuid4()}", headers=bob)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"] == f"roadmap {alice_id} not found"  # same words as a missing one
    assert topic not in theirs.text

    own = await client.get(f"/api/v1/roadmaps/{alice_id}", headers=alice)
    assert own.status_code == 200 and own.json()["topic"] == topic
    assert "owner" not in own.json()

    bobs = (await client.get("/api/v1/roadmaps", params={"limit": 100}, headers=bob)).json()
    assert [item["id"] for item in bobs["items"]] == [bob_id] and bobs["total"] == 1
    alices = (await client.get("/api/v1/roadmaps", params={"limit": 100}, headers=alice)).json()
    assert [item["id"] for item in alices["items"]] == [alice_id] and alices["total"] == 1
    assert all("owner" not in item for item in alices["items"])
    # Past the last page the total is still the owner's own (the second, count-only statement).
    beyond = (await client.get("/api/v1/roadmaps", params={"offset": 5}, headers=alice)).json()
    assert beyond["items"] == [] and beyond["total"] == 1

    admin = auth("admin", subject="ops")
    assert (await client.get(f"/api/v1/roadmaps/{alice_id}", headers=admin)).json()["topic"] == topic
    everyone = (await client.get("/api/v1/roadmaps", params={"limit": 100}, headers=admin)).json()
    assert {alice_id, bob_id} <= {item["id"] for item in everyone["items"]}
    assert everyone["total"] >= 2


async def test_task_logs_are_for_admins_only(client: httpx.AsyncClient) -> None:
    """Task events describe every user's work (a roadmap's id is its task id): no user reads them."""
    created = await client.post("/api/v1/roadmaps", json={"topic": "Logs"}, headers=auth(subject="alice"))
    params = {"task_id": created.json()["id"]}
    denied = await client.get("/api/v1/task-logs", params=params, headers=auth(subject="bob"))
    assert denied.status_code == 403 and "admin" in denied.json()["detail"]
    assert (
        await client.get("/api/v1/task-logs", params=params, headers=auth(subject="alice"))
    ).status_code == 403
    allowed = await client.get("/api/v1/task-logs", params=params, headers=auth("admin"))
    assert allowed.status_code == 200


async def test_the_owner_index_serves_a_users_page(test_db: object) -> None:
    """The migration created the per-owner index and a user's page can be read from it, in order."""
    await test_db.execute("SET enable_seqscan = off")  # type: ignore[attr-defined]
    plan = await test_db.fetch(  # type: ignore[attr-defined]
        "EXPLAIN SELECT id FROM roadmaps WHERE owner = $1 ORDER BY created_at DESC LIMIT 20", "alice"
    )
    assert "ix_roadmaps_owner_created_at" in "\n".join(r[0] for r in plan)
