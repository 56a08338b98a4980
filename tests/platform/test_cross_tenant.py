"""Isolation: whatever one tenant tries on another tenant's adapter, by its name, the answer is
the 404 that a name which does not exist gets."""

from __future__ import annotations

import pytest

from tests.platform.conftest import upload_adapter


@pytest.fixture(scope="module")
def owner_and_intruder(http, platform, peft_adapters):
    from tests.platform.conftest import create_tenant

    owner, intruder = create_tenant(http, platform), create_tenant(http, platform)
    assert upload_adapter(http, owner, "secret", peft_adapters[0]).status_code == 201
    return owner, intruder


ATTEMPTS = {
    "list versions": lambda http, t, ref, adapter: http.get(
        f"/v1/adapters/{ref}/versions", headers=t.headers
    ),
    "get": lambda http, t, ref, adapter: http.get(f"/v1/adapters/{ref}", headers=t.headers),
    "use (completion)": lambda http, t, ref, adapter: http.post(
        "/v1/completions",
        json={"model": ref, "prompt": "hi", "max_tokens": 2},
        headers=t.headers,
    ),
    "use (chat)": lambda http, t, ref, adapter: http.post(
        "/v1/chat/completions",
        json={"model": ref, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers=t.headers,
    ),
    "upload a new version": lambda http, t, ref, adapter: http.post(
        "/v1/adapters", data={"name": ref}, files=adapter.multipart(), headers=t.headers
    ),
    "delete": lambda http, t, ref, adapter: http.delete(f"/v1/adapters/{ref}", headers=t.headers),
}


def _owner_untouched(http, owner) -> None:
    versions = http.get("/v1/adapters/secret", headers=owner.headers).json()["versions"]
    assert [v["version"] for v in versions] == [1]


@pytest.mark.parametrize("version", ["", ":1"])
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_another_tenants_adapter_by_its_name_is_a_404(
    http, owner_and_intruder, peft_adapters, attempt, version
):
    owner, intruder = owner_and_intruder
    act = ATTEMPTS[attempt]
    response = act(http, intruder, f"{owner.name}/secret{version}", peft_adapters[1])
    missing = act(http, intruder, f"{owner.name}/nothing{version}", peft_adapters[1])
    no_tenant = act(http, intruder, f"no-such-tenant/secret{version}", peft_adapters[1])
    assert response.status_code == missing.status_code == no_tenant.status_code == 404
    assert response.json()["error"]["type"] == missing.json()["error"]["type"]
    assert response.json()["error"]["code"] == missing.json()["error"]["code"]
    _owner_untouched(http, owner)


@pytest.mark.parametrize("attempt", ["list versions", "get", "use (completion)", "delete"])
def test_a_short_name_never_reaches_another_tenant(
    http, owner_and_intruder, peft_adapters, attempt
):
    owner, intruder = owner_and_intruder
    response = ATTEMPTS[attempt](http, intruder, "secret", peft_adapters[1])
    assert response.status_code == 404
    _owner_untouched(http, owner)


def test_lists_show_only_the_callers_adapters_and_names_are_per_tenant(
    http, owner_and_intruder, peft_adapters
):
    owner, intruder = owner_and_intruder
    assert http.get("/v1/adapters", headers=intruder.headers).json()["data"] == []
    # The intruder's own "secret" is a separate adapter; the owner's stays as it was.
    created = upload_adapter(http, intruder, "secret", peft_adapters[1])
    assert created.status_code == 201 and created.json()["version"] == 1
    assert (
        http.get(f"/v1/adapters/{intruder.name}/secret", headers=intruder.headers).json()[
            "latest_version"
        ]
        == 1
    )
    assert http.delete("/v1/adapters/secret", headers=intruder.headers).status_code == 200
    _owner_untouched(http, owner)
    own_qualified = http.get(f"/v1/adapters/{owner.name}/secret:1", headers=owner.headers)
    assert own_qualified.status_code == 200 and own_qualified.json()["version"] == 1
