"""Each page's contract, read with BeautifulSoup: its data-* hooks, that its figures are the
admin API's, that its forms do what the API does (and show errors beside the form), that
values from the registry render as text, and that every control has a label."""

from __future__ import annotations

import httpx
import pytest
from bs4 import BeautifulSoup

from tests.adapters.archives import tar_files
from tests.platform.conftest import create_tenant, upload_adapter
from tests.web.conftest import unique_name
from tests.web.dashboard_client import DashboardUser, Page

ACTIONS = ("button", "input", "select", "textarea")


def _accessible_name(page: Page, control) -> str:
    if control.get("aria-label") or control.get("aria-labelledby"):
        return control.get("aria-label") or control["aria-labelledby"]
    if control.name == "button":
        return control.get_text(strip=True)
    label = page.soup.select_one(f'label[for="{control.get("id")}"]') if control.get("id") else None
    return label.get_text(strip=True) if label else ""


def assert_controls_labelled(page: Page) -> None:
    for control in page.soup.select(", ".join(ACTIONS)):
        if control.name == "input" and control.get("type") == "hidden":
            continue
        assert _accessible_name(page, control), f"unlabelled control: {control}"


@pytest.fixture
def make_account(api, web_platform):
    return lambda: create_tenant(api, web_platform)


def _engine(api, web_platform) -> dict:
    return api.get("/admin/v1/engine", headers=web_platform.admin_headers).json()


def test_overview_shows_the_engine_as_the_admin_api_does(admin, api, web_platform):
    page = admin.get("/dashboard")
    assert page.status == 200
    engine = _engine(api, web_platform)
    assert page.one("[data-engine-model]").text == engine["model"] == "tiny-llama"
    settings = {e["data-engine-setting"]: e.text for e in page.soup.select("[data-engine-setting]")}
    assert settings["dtype"] == engine["config"]["dtype"] == "float32"
    assert settings["device"] == "cpu"
    assert settings["max_model_len"] == "256"
    assert engine["config"]["async_scheduling"] is True
    assert settings["async_scheduling"] == "overlapped with the GPU"
    assert settings["max_loras"].startswith(str(engine["max_loras"]))
    slots = page.soup.select("[data-slot]")
    assert [int(s["data-slot"]) for s in slots] == list(range(engine["max_loras"]))
    for name in ("figures", "slots", "tokens", "requests"):
        page.one(f'[data-live-fragment="{name}"]')
    for name in ("tokens", "requests"):
        chart = page.one(f'[data-chart="{name}"]')
        assert float(chart["data-total"]) >= 0 and chart.select_one("svg[role=img]")["aria-label"]
    assert page.one("[data-live-url]")["data-live-url"] == "/dashboard/live.json"
    assert page.one('[data-nav="overview"]')["aria-current"] == "page"
    assert page.one('[data-figure="kv-cache"]').text.endswith("%")
    assert_controls_labelled(page)


def test_live_data_and_fragments_follow_a_completion(
    admin, api, web_platform, tenant, peft_adapters
):
    assert upload_adapter(api, tenant, "live-bot", peft_adapters[0]).status_code == 201
    done = api.post(
        "/v1/completions",
        headers=tenant.headers,
        json={"model": "live-bot", "prompt": "hi", "max_tokens": 3},
    )
    assert done.status_code == 200
    live = admin.http.get("/dashboard/live.json").json()
    engine = _engine(api, web_platform)
    by_slot = {s["slot"]: s for s in live["slots"]}
    for slot in engine["slots"]:
        assert by_slot[slot["slot"]]["adapter_version_id"] == slot["adapter_version_id"]
    references = {s["adapter"] for s in live["slots"]}
    assert f"{tenant.name}/live-bot:v1" in references
    assert live["engine"]["slot_loads"] == engine["slot_loads"] >= 1
    assert live["adapter_loads"]["gpu"] == engine["slot_loads"]
    assert set(live["fragments"]) == {"figures", "slots", "tokens", "requests"}
    assert f'data-slot-adapter="{tenant.name}/live-bot:v1"' in live["fragments"]["slots"]
    history = live["history"]
    assert history["window_seconds"] == 300 and isinstance(history["points"], list)


def test_tenants_page_lists_counts_usage_and_searches(admin, api, web_platform, peft_adapters):
    name = unique_name("counted")
    created = api.post("/admin/v1/tenants", json={"name": name}, headers=web_platform.admin_headers)
    tenant_id = created.json()["id"]
    key = api.post(f"/admin/v1/tenants/{tenant_id}/keys", headers=web_platform.admin_headers)
    headers = {"Authorization": f"Bearer {key.json()['key']}"}
    for adapter in ("one", "two"):
        files = peft_adapters[0].multipart()
        response = api.post("/v1/adapters", data={"name": adapter}, files=files, headers=headers)
        assert response.status_code == 201
    for _ in range(2):
        body = {"model": "one", "prompt": "hello", "max_tokens": 2}
        assert api.post("/v1/completions", json=body, headers=headers).status_code == 200
    usage = api.get(
        f"/admin/v1/usage?tenant_id={tenant_id}", headers=web_platform.admin_headers
    ).json()["data"]

    page = admin.get(f"/dashboard/tenants?q={name}")
    row = page.one(f'[data-tenant-row="{name}"]')
    assert row["data-tenant-id"] == str(tenant_id)
    assert row.select_one("[data-adapters-count]")["data-adapters-count"] == "2"
    assert row.select_one("[data-usage-requests]")["data-usage-requests"] == str(
        sum(u["requests"] for u in usage)
    )
    tokens = sum(u["prompt_tokens"] + u["completion_tokens"] for u in usage)
    assert row.select_one("[data-usage-tokens]")["data-usage-tokens"] == str(tokens)
    assert row.select_one("[data-tenant-status]")["data-tenant-status"] == "active"
    assert len(page.soup.select("[data-tenant-row]")) == 1
    assert page.one("[data-pager]")["data-pager-total"] == "1"
    assert page.one("#search-tenants")["value"] == name
    assert_controls_labelled(page)

    nothing = admin.get("/dashboard/tenants?q=no-such-tenant-anywhere")
    assert nothing.soup.select("[data-tenant-row]") == [] and nothing.one("[data-empty]")
    refused = admin.get("/dashboard/tenants?q=%3Cscript%3E")
    assert "may contain only" in refused.one("[data-search-error]").text
    assert admin.get("/dashboard/tenants?page=zero").status == 400


def test_creating_a_tenant_reports_bad_fields_beside_the_form(admin, api, web_platform):
    tenants = admin.get("/dashboard/tenants")
    bad = admin.submit(
        tenants,
        "form[data-create-tenant]",
        {"name": "Not Valid", "max_adapters": "lots", "requests_per_minute": "0"},
    )
    assert bad.status == 400
    errors = {e["data-field-error"]: e.text for e in bad.soup.select("[data-field-error]")}
    assert "lowercase letters" in errors["name"]
    assert "whole number" in errors["max_adapters"]
    assert bad.one("#tenant-name")["value"] == "Not Valid"
    assert bad.one("#tenant-name")["aria-invalid"] == "true"
    assert [e["id"] for e in bad.soup.select("[autofocus]")] == ["tenant-name"]

    name = unique_name("made")
    made = admin.submit(tenants, "form[data-create-tenant]", {"name": name, "max_adapters": "3"})
    tenant_page = admin.follow(made)
    assert tenant_page.one("[data-tenant-name]").text == name
    assert f"Tenant {name} created." in tenant_page.one("[data-flash=success]").text
    listed = api.get(f"/admin/v1/tenants?search={name}", headers=web_platform.admin_headers)
    assert [(t["name"], t["max_adapters"]) for t in listed.json()["data"]] == [(name, 3)]
    again = admin.submit(tenants, "form[data-create-tenant]", {"name": name})
    assert again.status == 409 and "already exists" in again.one('[data-field-error="name"]').text


def test_tenant_page_quotas_status_and_keys(admin, api, web_platform, tenant):
    path = f"/dashboard/tenants/{tenant.id}"
    page = admin.get(path)
    assert page.one("[data-tenant-name]").text == tenant.name
    assert {e["data-quota"] for e in page.soup.select("[data-quota]")} == {
        "max_adapters",
        "requests_per_minute",
        "tokens_per_minute",
        "max_upload_bytes",
    }
    page.one('[data-chart="usage"]')
    page.one("form[data-upload-form]")
    assert_controls_labelled(page)

    bad = admin.submit(page, "form[data-quota-form]", {"tokens_per_minute": "-5"})
    assert bad.status == 400 and bad.one('[data-field-error="tokens_per_minute"]')
    saved = admin.submit(page, "form[data-quota-form]", {"tokens_per_minute": "90,000"})
    assert "Quotas of" in admin.follow(saved).one("[data-flash=success]").text
    headers = web_platform.admin_headers
    tenant_json = api.get(f"/admin/v1/tenants/{tenant.id}", headers=headers).json()
    assert tenant_json["tokens_per_minute"] == 90000 and tenant_json["max_adapters"] is None

    disabled = admin.submit(admin.get(path), "form[data-status-form]", {})
    assert admin.follow(disabled).one("[data-tenant-status]")["data-tenant-status"] == "disabled"
    assert api.get("/v1/models", headers=tenant.headers).status_code == 401
    enabled = admin.submit(admin.get(path), "form[data-status-form]", {})
    assert admin.follow(enabled).one("[data-tenant-status]")["data-tenant-status"] == "active"
    assert api.get("/v1/models", headers=tenant.headers).status_code == 200

    created = admin.submit(admin.get(path), "form[data-create-key]", {"name": "ci"})
    shown = admin.follow(created)
    key = shown.one("[data-new-key]")["value"]
    assert api.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    again = admin.get(path)
    assert again.soup.select("[data-new-key]") == [] and key not in again.response.text
    rows = again.soup.select("[data-key-row]")
    new_row = next(r for r in rows if r.select_one("[data-key-name]").text == "ci")
    assert key.startswith(new_row.select_one("[data-key-prefix]").text.rstrip("…"))
    revoke_form = f'form:has([data-revoke-key="{new_row["data-key-row"]}"])'
    revoked = admin.submit(again, revoke_form, {})
    assert (
        admin.follow(revoked)
        .one(f'[data-key-row="{new_row["data-key-row"]}"]')
        .has_attr("data-key-revoked")
    )
    assert api.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    too_long = admin.submit(admin.get(path), "form[data-create-key]", {"name": "k" * 200})
    assert too_long.status == 400 and too_long.one('[data-field-error="key"]')


def test_key_names_render_as_text(admin, tenant):
    hostile = '<script>alert("owned")</script><img src=x onerror=alert(1)>'
    page = admin.get(f"/dashboard/tenants/{tenant.id}")
    created = admin.follow(admin.submit(page, "form[data-create-key]", {"name": hostile}))
    names = [e.text for e in created.soup.select("[data-key-name]")]
    assert hostile in names
    assert hostile in created.one("[data-flash=secret]").text
    assert created.soup.find("img") is None
    scripts = [s for s in created.soup.find_all("script") if not s.get("src")]
    assert scripts == []  # no inline script at all, hostile or not
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in created.response.text


def test_uploading_deleting_and_errors_through_the_tenant_page(
    admin, api, web_platform, tenant, peft_adapters
):
    path = f"/dashboard/tenants/{tenant.id}"
    adapter = peft_adapters[1]
    page = admin.get(path)
    token = page.csrf("form[data-upload-form]")
    upload_path = page.one("form[data-upload-form]")["action"]

    def upload(name: str, files) -> Page:
        response = admin.http.post(
            upload_path, data={"csrf_token": token, "name": name}, files=files
        )
        return Page(response, BeautifulSoup(response.text, "html.parser"))

    archive = tar_files({"adapter_config.json": adapter.config,
                         "adapter_model.safetensors": adapter.weights})  # fmt: skip
    uploaded = upload("archived", [("archive", ("bundle.tar.gz", archive, "application/gzip"))])
    assert uploaded.status == 303
    second = upload("archived", adapter.multipart())
    assert second.status == 303
    listed = admin.get(path)
    versions = [r["data-version-row"] for r in listed.soup.select("[data-version-row]")]
    assert versions == ["archived:2", "archived:1"]
    cached = listed.one('[data-version-row="archived:1"] [data-cached]')["data-cached"]
    assert cached == "store"  # never used yet

    refusals = {
        "pickle": [("files", ("adapter_model.bin", b"\x80\x04", "application/octet-stream"))],
        "nothing": [],
        "one-file": adapter.multipart()[:1],
    }
    for name, files in refusals.items():
        refused = upload(name, files)
        assert refused.status == 400, name
        assert refused.one("[data-upload-error]").text.strip().startswith("Upload refused")
        assert refused.one("#upload-name")["value"] == name
    assert upload("tiny-llama", adapter.multipart()).status == 400  # the base model's name
    too_many = upload("many", adapter.multipart() * 2)
    assert (
        too_many.status == 400 and "could not be read" in too_many.one("[data-error-message]").text
    )

    deleted = admin.submit(listed, 'form:has([data-delete-version="archived:2"])', {})
    assert "Deleted archived:2." in admin.follow(deleted).one("[data-flash=success]").text
    remaining = api.get(
        f"/admin/v1/adapters?tenant_id={tenant.id}", headers=web_platform.admin_headers
    )
    assert [v["version"] for v in remaining.json()["data"][0]["versions"]] == [1]
    whole = admin.submit(admin.get(path), 'form:has([data-delete-adapter="archived"])', {})
    assert admin.follow(whole).soup.select("[data-adapter-row]") == []
    gone = admin.submit(listed, 'form:has([data-delete-adapter="archived"])', {})  # stale page
    assert gone.status == 404 and "not found" in gone.one("[data-error-message]").text


def test_adapters_page_lists_every_tenant_with_cache_tiers(
    admin, api, web_platform, make_account, peft_adapters
):
    first, second = make_account(), make_account()
    for account, name in ((first, "shared-name"), (second, "shared-name")):
        assert upload_adapter(api, account, name, peft_adapters[0]).status_code == 201
    body = {"model": "shared-name", "prompt": "hello", "max_tokens": 2}
    assert api.post("/v1/completions", json=body, headers=first.headers).status_code == 200
    page = admin.get("/dashboard/adapters?q=shared-name")
    rows = {r["data-adapter-row"] for r in page.soup.select("[data-adapter-row]")}
    assert {f"{first.name}/shared-name", f"{second.name}/shared-name"} <= rows
    used = page.one(f'[data-version-row="{first.name}/shared-name:v1"]')
    assert used.select_one("[data-cached]")["data-cached"] == "gpu"
    assert used["data-rank"] == "8" and used["data-status"] == "ready"
    assert int(used["data-size"]) == len(peft_adapters[0].config) + len(peft_adapters[0].weights)
    only_first = admin.get(f"/dashboard/adapters?q={first.name}/shared")
    assert [r["data-adapter-row"] for r in only_first.soup.select("[data-adapter-row]")] == [
        f"{first.name}/shared-name"
    ]
    assert_controls_labelled(page)


def test_unknown_tenants_are_404_pages(admin):
    for raw in ("999999", "abc", "99999999999999999999"):
        page = admin.get(f"/dashboard/tenants/{raw}")
        assert page.status == 404 and page.one("body")["data-page"] == "error"


def test_static_files_are_served(web_platform):
    for name in ("dashboard.css", "live.js", "copy.js", "confirm.js"):
        response = httpx.get(f"{web_platform.url}/dashboard/static/{name}")
        assert response.status_code == 200 and len(response.content) > 100, name


def test_signed_in_user_is_shown_and_can_sign_out(web_platform):
    user = DashboardUser(web_platform.url)
    user.sign_in(web_platform.admin_key)
    page = user.get("/dashboard/adapters")
    assert page.one(".who-key").text.endswith("(bootstrap)")
    assert page.response.text.count("data-sign-out") == 1
    user.close()
