"""The dashboard in a real browser (headless Chromium), as an operator uses it: sign in, create a
tenant and a key, upload adapters through the form, watch a completion reach a GPU slot and the
charts, revoke the key, sign out. Each page is saved as a screenshot in test-artifacts/."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.web.browser import screenshot
from tests.web.conftest import unique_name

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def malformed_adapter(tmp_path, peft_adapters):
    """A real config beside weights that are not a safetensors file."""
    folder = tmp_path / "malformed"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes(peft_adapters[0].config)
    (folder / "adapter_model.safetensors").write_bytes(b"these bytes are not tensors")
    return folder


def _chart_total(page, name: str) -> float:
    return float(page.get_attribute(f'[data-chart="{name}"]', "data-total"))


def test_operator_flow(page, web_platform, peft_adapters, malformed_adapter):
    base = web_platform.url
    tenant_name = unique_name("browser-co")

    # Signing in: a wrong key is refused on the form, the admin key opens the overview.
    page.goto(f"{base}/dashboard/tenants")
    assert page.url.startswith(f"{base}/dashboard/sign-in")
    page.get_by_label("Admin key").fill("lpx_not-a-real-key-0123456789")
    page.get_by_role("button", name="Sign in").click()
    assert "not an active admin key" in page.inner_text("[data-sign-in-error]")
    screenshot(page, "01-sign-in-error")
    page.get_by_label("Admin key").fill(web_platform.admin_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/dashboard/tenants")  # back where the operator was going

    # A tenant, created from the form.
    page.get_by_label("Name").fill(tenant_name)
    page.get_by_label("Requests per minute").fill("600")
    screenshot(page, "02-tenants-create")
    page.get_by_role("button", name="Create tenant").click()
    page.wait_for_url(re.compile(r".*/dashboard/tenants/\d+$"))
    assert page.inner_text("[data-tenant-name]") == tenant_name
    assert page.input_value('[data-quota="requests_per_minute"]') == "600"

    # A key, shown once with a copy button.
    page.get_by_label("New key’s name (optional)").fill("production")
    page.get_by_role("button", name="Create key").click()
    key = page.input_value("[data-new-key]")
    assert key.startswith("lpx_") and len(key) > 40
    page.get_by_role("button", name="Copy").click()
    page.wait_for_selector("[data-copy-status]:has-text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == key
    screenshot(page, "03-tenant-new-key")
    page.reload()
    assert page.locator("[data-new-key]").count() == 0
    assert key not in page.content()
    assert page.inner_text("[data-key-row] [data-key-name]") == "production"

    # An adapter uploaded through the form, then a malformed one refused beside the form.
    adapter = peft_adapters[0].path
    page.get_by_label("Adapter name").fill("support-bot")
    page.set_input_files(
        "#upload-files",
        [str(adapter / "adapter_config.json"), str(adapter / "adapter_model.safetensors")],
    )
    page.get_by_role("button", name="Upload", exact=True).click()
    page.wait_for_selector('[data-adapter-row="support-bot"]')
    assert "Uploaded support-bot:1" in page.inner_text("[data-flash=success]")
    page.get_by_label("Adapter name").fill("broken")
    page.set_input_files(
        "#upload-files",
        [
            str(malformed_adapter / "adapter_config.json"),
            str(malformed_adapter / "adapter_model.safetensors"),
        ],
    )
    page.get_by_role("button", name="Upload", exact=True).click()
    error = page.inner_text("[data-upload-error]")
    assert "Upload refused" in error and "safetensors" in error
    assert page.locator('[data-adapter-row="broken"]').count() == 0
    assert page.input_value("#upload-name") == "broken"  # the form keeps what was typed
    assert page.evaluate("'uploadError' in document.activeElement.dataset")  # in view, read out
    screenshot(page, "04-tenant-upload-error")

    # A completion with the tenant's key shows up live: a GPU slot and the request chart.
    page.get_by_role("link", name="Overview").click()
    requests_before = _chart_total(page, "requests")
    tokens_before = _chart_total(page, "tokens")
    updated_before = page.get_attribute("[data-live-url]", "data-live-updated")
    completion = httpx.post(
        f"{base}/v1/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "support-bot", "prompt": "Hello there", "max_tokens": 6},
        timeout=120,
    )
    assert completion.status_code == 200, completion.text
    page.wait_for_selector(f'[data-slot-adapter="{tenant_name}/support-bot:v1"]')
    page.wait_for_function(
        "before => Number(document.querySelector('[data-chart=requests]').dataset.total) > before",
        arg=requests_before,
    )
    # Tokens are counted when a request finishes: a refresh during it may not show them yet.
    page.wait_for_function(
        "before => Number(document.querySelector('[data-chart=tokens]').dataset.total) > before",
        arg=tokens_before,
    )
    assert page.get_attribute("[data-live-url]", "data-live-updated") != updated_before
    assert page.locator("[data-chart=requests] polyline").count() == 1
    screenshot(page, "05-overview-live")

    # The adapters page says where the version is cached now.
    page.get_by_role("link", name="Adapters").click()
    row = page.locator(f'[data-version-row="{tenant_name}/support-bot:v1"]')
    assert row.locator("[data-cached]").get_attribute("data-cached") == "gpu"
    screenshot(page, "06-adapters")

    # Revoking the key: the API refuses it at once. The usage chart shows the request.
    page.get_by_role("link", name="Tenants").click()
    page.get_by_label("Search tenants").fill(tenant_name)
    page.get_by_label("Search tenants").press("Enter")
    row = page.locator(f'[data-tenant-row="{tenant_name}"]')
    assert row.locator("[data-usage-requests]").get_attribute("data-usage-requests") == "1"
    screenshot(page, "07-tenants-search")
    page.get_by_role("link", name=tenant_name, exact=True).click()
    assert float(page.get_attribute('[data-chart="usage"]', "data-total")) > 0
    page.locator("[data-revoke-key]").click()
    page.wait_for_selector("[data-key-revoked]")
    refused = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    assert json.loads(refused.text)["error"]["type"] == "authentication_error"
    screenshot(page, "08-tenant-revoked")

    # Signing out ends the session.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_selector("[data-sign-in-notice]")
    screenshot(page, "09-signed-out")
    page.goto(f"{base}/dashboard")
    assert page.url.startswith(f"{base}/dashboard/sign-in")
