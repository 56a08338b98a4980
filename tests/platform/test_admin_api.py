"""The admin API: tenants and quotas, keys, all adapters, engine state, usage; and who may
call it (admin keys only)."""

from __future__ import annotations

import pytest

from tests.platform.conftest import openai_client, upload_adapter

ADMIN_ENDPOINTS = [
    ("GET", "/admin/v1/tenants"),
    ("POST", "/admin/v1/tenants"),
    ("GET", "/admin/v1/tenants/1"),
    ("PATCH", "/admin/v1/tenants/1"),
    ("POST", "/admin/v1/tenants/1/keys"),
    ("GET", "/admin/v1/tenants/1/keys"),
    ("DELETE", "/admin/v1/tenants/1/keys/1"),
    ("GET", "/admin/v1/adapters"),
    ("GET", "/admin/v1/engine"),
    ("GET", "/admin/v1/usage"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ENDPOINTS)
def test_admin_api_refuses_missing_unknown_and_tenant_keys(http, tenant, method, path):
    assert http.request(method, path).status_code == 401
    unknown = http.request(method, path, headers={"Authorization": "Bearer lpx_unknown-key-123"})
    assert unknown.status_code == 401 and unknown.json()["error"]["type"] == "authentication_error"
    forbidden = http.request(method, path, headers=tenant.headers, json={"name": "x"})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["type"] == "permission_error"


def test_tenant_lifecycle(http, platform):
    admin = platform.admin_headers
    created = http.post(
        "/admin/v1/tenants", json={"name": "lifecycle", "requests_per_minute": 10}, headers=admin
    )
    assert created.status_code == 201
    tenant = created.json()
    assert tenant["name"] == "lifecycle" and tenant["requests_per_minute"] == 10
    assert tenant["disabled"] is False and tenant["max_adapters"] is None
    assert (
        http.post("/admin/v1/tenants", json={"name": "lifecycle"}, headers=admin).status_code == 409
    )
    for bad in (
        {"name": "Bad Name"},
        {"name": "ok", "max_adapters": 0},
        {"name": "ok", "x": 1},
        {},
    ):
        assert http.post("/admin/v1/tenants", json=bad, headers=admin).status_code == 400, bad

    tenant_id = tenant["id"]
    assert http.get(f"/admin/v1/tenants/{tenant_id}", headers=admin).json() == tenant
    assert tenant_id in [
        t["id"] for t in http.get("/admin/v1/tenants", headers=admin).json()["data"]
    ]
    assert http.get("/admin/v1/tenants/999999", headers=admin).status_code == 404
    assert http.patch("/admin/v1/tenants/999999", json={}, headers=admin).status_code == 404

    updated = http.patch(
        f"/admin/v1/tenants/{tenant_id}",
        json={"requests_per_minute": None, "tokens_per_minute": 5000, "max_adapters": 3},
        headers=admin,
    ).json()
    assert (updated["requests_per_minute"], updated["tokens_per_minute"]) == (None, 5000)
    assert updated["max_adapters"] == 3

    key = http.post(f"/admin/v1/tenants/{tenant_id}/keys", headers=admin).json()
    headers = {"Authorization": f"Bearer {key['key']}"}
    assert http.get("/v1/models", headers=headers).status_code == 200
    disabled = http.patch(f"/admin/v1/tenants/{tenant_id}", json={"disabled": True}, headers=admin)
    assert disabled.json()["disabled"] is True
    assert http.get("/v1/models", headers=headers).status_code == 401
    http.patch(f"/admin/v1/tenants/{tenant_id}", json={"disabled": False}, headers=admin)
    assert http.get("/v1/models", headers=headers).status_code == 200


def test_keys_are_shown_once_listed_without_secrets_and_revocable(http, platform, tenant):
    admin = platform.admin_headers
    created = http.post(
        f"/admin/v1/tenants/{tenant.id}/keys", json={"name": "ci"}, headers=admin
    ).json()
    assert created["key"].startswith(created["prefix"]) and created["name"] == "ci"
    listed = http.get(f"/admin/v1/tenants/{tenant.id}/keys", headers=admin).json()["data"]
    assert {k["id"] for k in listed} >= {created["id"]}
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert created["key"] not in str(listed)

    headers = {"Authorization": f"Bearer {created['key']}"}
    assert http.get("/v1/adapters", headers=headers).status_code == 200
    revoked = http.delete(f"/admin/v1/tenants/{tenant.id}/keys/{created['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert http.get("/v1/adapters", headers=headers).status_code == 401
    assert http.get("/v1/adapters", headers=tenant.headers).status_code == 200  # other key
    remaining = http.get(f"/admin/v1/tenants/{tenant.id}/keys", headers=admin).json()["data"]
    assert created["id"] not in [k["id"] for k in remaining]
    with_revoked = http.get(
        f"/admin/v1/tenants/{tenant.id}/keys?include_revoked=true", headers=admin
    ).json()["data"]
    assert created["id"] in [k["id"] for k in with_revoked]
    # A key id of another tenant is not found through this tenant.
    other = http.post("/admin/v1/tenants", json={"name": "keyless"}, headers=admin).json()
    assert (
        http.delete(
            f"/admin/v1/tenants/{other['id']}/keys/{created['id']}", headers=admin
        ).status_code
        == 404
    )
    assert http.post("/admin/v1/tenants/999999/keys", headers=admin).status_code == 404


def test_all_adapters_engine_state_and_usage(http, platform, make_tenant, peft_adapters):
    admin = platform.admin_headers
    first, second = make_tenant(), make_tenant()
    assert upload_adapter(http, first, "alpha", peft_adapters[0]).status_code == 201
    assert upload_adapter(http, second, "beta", peft_adapters[1]).status_code == 201
    everything = http.get("/admin/v1/adapters", headers=admin).json()["data"]
    pairs = {(a["tenant_name"], a["name"]) for a in everything}
    assert {(first.name, "alpha"), (second.name, "beta")} <= pairs
    only = http.get(f"/admin/v1/adapters?tenant_id={first.id}", headers=admin).json()["data"]
    assert [a["name"] for a in only] == ["alpha"]

    client = openai_client(platform, first.key)
    response = client.completions.create(model="alpha", prompt="hello there", max_tokens=4)
    openai_client(platform, second.key).completions.create(model="beta", prompt="hi", max_tokens=3)
    client.completions.create(model="tiny-llama", prompt="hello", max_tokens=2)

    engine = http.get("/admin/v1/engine", headers=admin).json()
    assert engine["healthy"] and engine["model"] == "tiny-llama"
    assert engine["max_loras"] == len(engine["slots"]) == 2
    in_slots = {slot["adapter"] for slot in engine["slots"]}
    assert f"{second.id}/beta:v1" in in_slots
    assert engine["num_running"] == 0 and engine["kv_cache_usage"] == 0.0
    assert engine["slot_loads"] >= 2

    usage = http.get(f"/admin/v1/usage?tenant_id={first.id}", headers=admin).json()["data"]
    by_adapter = {row["adapter"]: row for row in usage}
    assert by_adapter["alpha"]["requests"] == 1
    assert by_adapter["alpha"]["completion_tokens"] == 4
    assert by_adapter["alpha"]["prompt_tokens"] == response.usage.prompt_tokens
    assert by_adapter[None]["completion_tokens"] == 2
    assert all(row["tenant_id"] == first.id for row in usage)
    hourly = http.get("/admin/v1/usage?by_version=true&bucket_seconds=3600", headers=admin).json()
    assert any(row["adapter"] == "beta" and row["version"] == 1 for row in hourly["data"])
    bad = http.get(
        "/admin/v1/usage?start=2030-01-02T00:00:00Z&end=2030-01-01T00:00:00Z", headers=admin
    )
    assert bad.status_code == 400
