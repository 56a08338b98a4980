"""The dashboard without a mouse: sign in, move between pages and submit forms with Tab and
Enter only, seeing where the focus is."""

from __future__ import annotations

from tests.web.browser import screenshot
from tests.web.conftest import unique_name

MAX_TABS = 60


def tab_to(page, selector: str) -> None:
    """Press Tab until `selector` has the focus (Tab order only, no clicks)."""
    for _ in range(MAX_TABS):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} cannot be reached with Tab")


def test_keyboard_only_operator(page, web_platform):
    base = web_platform.url
    page.goto(f"{base}/dashboard")
    # The key field has the focus at once; Enter submits.
    assert page.evaluate("document.activeElement.id") == "admin-key"
    page.keyboard.type(web_platform.admin_key)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/dashboard")

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    tab_to(page, '[data-nav="tenants"]')
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focus is visible
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/dashboard/tenants")

    name = unique_name("keyboard")
    tab_to(page, "#tenant-name")
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/dashboard/tenants/*")
    assert page.inner_text("[data-tenant-name]") == name

    tab_to(page, "#key-name")
    page.keyboard.type("from the keyboard")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-new-key]")
    tab_to(page, "[data-copy-target]")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-copy-status]:has-text('Copied')")
    screenshot(page, "10-keyboard-new-key")

    tab_to(page, "[data-revoke-key]")
    page.keyboard.press("Enter")  # confirm() is accepted by the test browser
    page.wait_for_selector("[data-key-revoked]")
