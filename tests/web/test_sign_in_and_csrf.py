"""Who gets in: pages redirect to sign-in without a session, other requests get a 401; only an
active admin key signs in; the session cookie is HttpOnly and SameSite=Strict; every form is
refused without its CSRF token, and nothing changes then."""

from __future__ import annotations

import pytest

from loraplex.adapters.api_keys import create_api_key, revoke_api_key
from loraplex.adapters.models import ROLE_ADMIN
from tests.web.conftest import unique_name
from tests.web.dashboard_client import SIGN_IN, DashboardUser

PAGES = ["/dashboard", "/dashboard/tenants", "/dashboard/tenants/1", "/dashboard/adapters"]


def _actions(tenant_id: int) -> list[tuple[str, dict[str, str]]]:
    """Every form's target, with values that would change something if accepted."""
    return [
        ("/dashboard/tenants", {"name": unique_name("csrf")}),
        (f"/dashboard/tenants/{tenant_id}/quotas", {"max_adapters": "1"}),
        (f"/dashboard/tenants/{tenant_id}/status", {"disabled": "true"}),
        (f"/dashboard/tenants/{tenant_id}/keys", {"name": "sneaky"}),
        (f"/dashboard/tenants/{tenant_id}/keys/1/revoke", {}),
        (f"/dashboard/tenants/{tenant_id}/adapters", {"name": "x"}),
        (f"/dashboard/tenants/{tenant_id}/adapters/delete", {"name": "x"}),
        ("/dashboard/sign-out", {}),
    ]


@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_to_sign_in_without_a_session(anonymous, path):
    page = anonymous.get(path + "?q=abc")
    assert page.status == 303
    assert (
        page.response.headers["location"] == f"{SIGN_IN}?next={path.replace('/', '%2F')}%3Fq%3Dabc"
    )


def test_live_data_and_forms_answer_401_without_a_session(anonymous, tenant, api, web_platform):
    live = anonymous.http.get("/dashboard/live.json")
    assert live.status_code == 401 and live.json()["error"]["code"] == "not_signed_in"
    for path, values in _actions(tenant.id):
        page = anonymous.post(path, {"csrf_token": "guess", **values})
        assert page.status == 401, path
        assert page.one("[data-error-message]").text.startswith("Your session has ended")
    state = api.get(f"/admin/v1/tenants/{tenant.id}", headers=web_platform.admin_headers).json()
    assert state["disabled"] is False and state["max_adapters"] is None


def test_sign_in_sets_a_strict_http_only_cookie_and_returns_to_next(anonymous, web_platform):
    signed = anonymous.sign_in(web_platform.admin_key, next_path="/dashboard/adapters")
    assert signed.status == 303
    assert signed.response.headers["location"] == "/dashboard/adapters"
    cookies = signed.response.headers.get_list("set-cookie")
    cookie = next(c for c in cookies if c.startswith("lpx_dashboard="))
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/dashboard"} <= attributes
    assert web_platform.admin_key not in cookie
    overview = anonymous.get("/dashboard")
    assert overview.status == 200 and overview.one("body")["data-page"] == "overview"
    assert "default-src 'self'" in overview.response.headers["content-security-policy"]
    assert anonymous.get(SIGN_IN).status == 303  # already signed in


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/x", "/admin/v1/tenants", "/dashboardx"]
)
def test_sign_in_never_redirects_outside_the_dashboard(anonymous, web_platform, target):
    signed = anonymous.sign_in(web_platform.admin_key, next_path=target)
    assert signed.response.headers["location"] == "/dashboard"


def test_wrong_keys_and_tenant_keys_do_not_sign_in(anonymous, tenant):
    for key in ("lpx_wrong-but-well-formed-key-1234567890", tenant.key, "", "x" * 400):
        page = anonymous.sign_in(key)
        assert page.status in (400, 401), key
        if page.status == 401:
            assert "not an active admin key" in page.one("[data-sign-in-error]").text
    assert anonymous.get("/dashboard").status == 303


def test_sign_in_form_needs_its_double_submit_token(anonymous, web_platform):
    form = anonymous.get(SIGN_IN)
    token = form.one("[data-sign-in-form] input[name=csrf_token]")["value"]
    forged = anonymous.post(
        SIGN_IN, {"csrf_token": token + "x", "key": web_platform.admin_key, "next": "/dashboard"}
    )
    assert forged.status == 403
    anonymous.http.cookies.clear()  # a cross-site form arrives without the sign-in cookie
    blind = anonymous.post(SIGN_IN, {"csrf_token": token, "key": web_platform.admin_key})
    assert blind.status == 403
    assert anonymous.get("/dashboard").status == 303


def test_every_form_refuses_a_missing_or_wrong_csrf_token(admin, tenant, api, web_platform):
    for path, values in _actions(tenant.id):
        for token in (None, "wrong-token"):
            data = dict(values) if token is None else {"csrf_token": token, **values}
            page = admin.post(path, data)
            assert page.status == 403, (path, token)
            assert "expired" in page.one("[data-error-message]").text
    headers = web_platform.admin_headers
    state = api.get(f"/admin/v1/tenants/{tenant.id}", headers=headers).json()
    assert state["disabled"] is False and state["max_adapters"] is None
    keys = api.get(f"/admin/v1/tenants/{tenant.id}/keys", headers=headers).json()["data"]
    assert [k["name"] for k in keys] == [""]  # only the key the fixture made
    assert admin.get("/dashboard").status == 200  # and the session is still signed in


def test_sign_out_ends_the_session_for_good(web_platform):
    user = DashboardUser(web_platform.url)
    user.sign_in(web_platform.admin_key)
    stolen = user.http.cookies.get("lpx_dashboard")
    overview = user.get("/dashboard")
    signed_out = user.submit(overview, "form[data-sign-out]", {})
    assert signed_out.status == 303 and "signed_out=1" in signed_out.response.headers["location"]
    assert "You are signed out" in user.follow(signed_out).one("[data-sign-in-notice]").text
    replay = DashboardUser(web_platform.url)
    replay.http.cookies.set("lpx_dashboard", stolen, path="/dashboard")
    assert replay.get("/dashboard").status == 303
    user.close()
    replay.close()


def test_revoking_the_admin_key_ends_its_sessions(web_platform):
    state = web_platform.server.state
    with state.sessions() as session:
        created = create_api_key(session=session, tenant_id=None, role=ROLE_ADMIN, name="temp")
    user = DashboardUser(web_platform.url)
    assert user.sign_in(created.plaintext).status == 303
    assert user.get("/dashboard").status == 200
    with state.sessions() as session:
        revoke_api_key(session=session, key_id=created.record.id)
    assert user.get("/dashboard").status == 303
    assert user.sign_in(created.plaintext).status == 401
    user.close()
