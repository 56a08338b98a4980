"""Adapter management over REST: upload (two files or one archive), list, get, delete; the
errors a tenant can run into; and what /v1/models shows."""

from __future__ import annotations

import io

from tests.adapters.archives import tar_files, zip_files
from tests.platform.conftest import UPLOAD_LIMIT_BYTES, openai_client, upload_adapter


def _archive_upload(http, tenant, name, filename, data):
    return http.post(
        "/v1/adapters",
        data={"name": name},
        files={"archive": (filename, data, "application/octet-stream")},
        headers=tenant.headers,
    )


def test_upload_list_get_and_delete_versions(http, tenant, peft_adapters):
    first, second = peft_adapters
    created = upload_adapter(http, tenant, "helper", first)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["id"], body["version"], body["rank"]) == ("helper:1", 1, 8)
    assert body["object"] == "adapter.version" and body["status"] == "ready"
    files = {"adapter_config.json": second.config, "adapter_model.safetensors": second.weights}
    tarred = _archive_upload(http, tenant, "helper", "bot.tar.gz", tar_files(files))
    assert tarred.status_code == 201, tarred.text
    zipped = _archive_upload(http, tenant, "helper", "bot.zip", zip_files(files))
    assert (tarred.json()["version"], zipped.json()["version"]) == (2, 3)
    assert zipped.json()["rank"] == 16

    listed = http.get("/v1/adapters", headers=tenant.headers).json()
    assert [a["name"] for a in listed["data"]] == ["helper"]
    assert listed["data"][0]["latest_version"] == 3
    assert [v["version"] for v in listed["data"][0]["versions"]] == [1, 2, 3]
    versions = http.get("/v1/adapters/helper/versions", headers=tenant.headers).json()["data"]
    assert [(v["id"], v["rank"]) for v in versions] == [
        ("helper:1", 8),
        ("helper:2", 16),
        ("helper:3", 16),
    ]
    one = http.get("/v1/adapters/helper:2", headers=tenant.headers)
    assert one.status_code == 200 and one.json()["id"] == "helper:2"

    deleted = http.delete("/v1/adapters/helper:3", headers=tenant.headers)
    assert deleted.json() == {"id": "helper:3", "object": "adapter.deleted", "deleted": True}
    assert http.get("/v1/adapters/helper:3", headers=tenant.headers).status_code == 404
    assert http.delete("/v1/adapters/helper:3", headers=tenant.headers).status_code == 404
    assert http.get("/v1/adapters/helper", headers=tenant.headers).json()["latest_version"] == 2

    assert http.delete("/v1/adapters/helper", headers=tenant.headers).status_code == 200
    assert http.get("/v1/adapters/helper", headers=tenant.headers).status_code == 404
    assert http.get("/v1/adapters", headers=tenant.headers).json()["data"] == []


def test_deleted_adapter_can_no_longer_be_used(http, platform, tenant, peft_adapters):
    assert upload_adapter(http, tenant, "brief", peft_adapters[0]).status_code == 201
    client = openai_client(platform, tenant.key)
    used = client.completions.create(model="brief", prompt="hello", max_tokens=2)
    assert used.usage.completion_tokens == 2
    assert http.delete("/v1/adapters/brief", headers=tenant.headers).status_code == 200
    response = http.post(
        "/v1/completions",
        json={"model": "brief", "prompt": "hello", "max_tokens": 2},
        headers=tenant.headers,
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    # The name is free again, and its version numbers go on.
    again = upload_adapter(http, tenant, "brief", peft_adapters[0])
    assert again.status_code == 201 and again.json()["version"] == 2


def test_models_lists_the_base_model_and_only_the_callers_adapters(
    http, platform, make_tenant, peft_adapters
):
    owner, other = make_tenant(), make_tenant()
    assert upload_adapter(http, owner, "mine", peft_adapters[0]).status_code == 201
    models = openai_client(platform, owner.key).models.list()
    cards = {m.id: m for m in models.data}
    assert set(cards) == {"tiny-llama", "mine"}
    assert cards["mine"].owned_by == owner.name and cards["mine"].parent == "tiny-llama"
    assert cards["tiny-llama"].owned_by == "loraplex"
    assert [m.id for m in openai_client(platform, other.key).models.list().data] == ["tiny-llama"]
    assert http.get("/v1/models/mine", headers=owner.headers).json()["id"] == "mine"
    assert http.get("/v1/models/mine", headers=other.headers).status_code == 404


def test_upload_refusals_say_what_is_wrong(http, tenant, peft_adapters):
    adapter = peft_adapters[0]
    pickled = http.post(
        "/v1/adapters",
        data={"name": "evil"},
        files=[
            ("files", ("adapter_config.json", adapter.config, "application/json")),
            ("files", ("adapter_model.bin", b"\x80\x04K\x01.", "application/octet-stream")),
        ],
        headers=tenant.headers,
    )
    assert pickled.status_code == 400 and "pickle" in pickled.json()["error"]["message"]
    bad_name = upload_adapter(http, tenant, "Not A Name", adapter)
    assert bad_name.status_code == 400 and "name" in bad_name.json()["error"]["message"]
    base_name = upload_adapter(http, tenant, "tiny-llama", adapter)
    assert base_name.status_code == 400
    nothing = http.post("/v1/adapters", data={"name": "empty"}, headers=tenant.headers)
    assert nothing.status_code == 400
    both = http.post(
        "/v1/adapters",
        data={"name": "both"},
        files=[*adapter.multipart(), ("archive", ("a.zip", b"PK", "application/zip"))],
        headers=tenant.headers,
    )
    assert both.status_code == 400
    garbage = _archive_upload(http, tenant, "junk", "junk.tar.gz", b"not a tarball")
    assert garbage.status_code == 400 and "archive" in garbage.json()["error"]["message"]
    assert http.get("/v1/adapters", headers=tenant.headers).json()["data"] == []


def test_upload_size_limits_are_413(http, make_tenant, peft_adapters):
    adapter = peft_adapters[0]
    small = make_tenant(max_upload_bytes=1024)
    refused = upload_adapter(http, small, "big", adapter)
    assert refused.status_code == 413 and "1024" in refused.json()["error"]["message"]
    roomy = make_tenant()
    oversized = io.BytesIO(b"\0" * (UPLOAD_LIMIT_BYTES + 2 * 1024 * 1024))
    response = http.post(
        "/v1/adapters",
        data={"name": "huge"},
        files=[("files", ("adapter_model.safetensors", oversized, "application/octet-stream"))],
        headers=roomy.headers,
    )
    assert response.status_code == 413

    def chunks():  # no Content-Length: the body is refused once it grows past the limit
        yield (
            b"--xyz\r\nContent-Disposition: form-data; name=files; "
            b"filename=adapter_model.safetensors\r\n\r\n"
        )
        for _ in range(UPLOAD_LIMIT_BYTES // (1024 * 1024) + 4):
            yield b"\0" * (1024 * 1024)

    chunked = http.post(
        "/v1/adapters",
        content=chunks(),
        headers={**roomy.headers, "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]["message"]
    assert upload_adapter(http, roomy, "fine", adapter).status_code == 201


def test_max_adapters_quota(http, make_tenant, peft_adapters):
    tenant = make_tenant(max_adapters=1)
    assert upload_adapter(http, tenant, "first", peft_adapters[0]).status_code == 201
    assert upload_adapter(http, tenant, "first", peft_adapters[1]).status_code == 201
    over = upload_adapter(http, tenant, "second", peft_adapters[0])
    assert over.status_code == 413 and "maximum of 1" in over.json()["error"]["message"]


def test_adapter_endpoints_need_a_tenant_key(http, platform, tenant, peft_adapters):
    for method, path in (
        ("GET", "/v1/adapters"),
        ("GET", "/v1/adapters/x"),
        ("DELETE", "/v1/adapters/x"),
    ):
        assert http.request(method, path).status_code == 401
        bad = http.request(method, path, headers={"Authorization": "Bearer lpx_not-a-real-key"})
        assert bad.status_code == 401
        assert bad.headers["WWW-Authenticate"] == "Bearer"
        admin = http.request(method, path, headers=platform.admin_headers)
        assert admin.status_code == 403
    assert upload_adapter(http, tenant, "ok", peft_adapters[0]).status_code == 201


def test_an_adapter_whose_bytes_are_gone_is_a_503_not_a_crash(
    http, platform, tenant, peft_adapters
):
    created = upload_adapter(http, tenant, "vanished", peft_adapters[0])
    assert created.status_code == 201
    state = platform.server.state
    removed = [key for key in state.store.delete_prefix(f"tenants/{tenant.id}/") if key]
    assert len(removed) == 2  # config and weights, never fetched yet
    response = http.post(
        "/v1/completions",
        json={"model": "vanished", "prompt": "hello", "max_tokens": 2},
        headers=tenant.headers,
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "adapter_unavailable"
    assert http.get("/health").status_code == 200
    base = {"model": "tiny-llama", "prompt": "hello", "max_tokens": 2}
    assert http.post("/v1/completions", json=base, headers=tenant.headers).status_code == 200
