"""Who may use the dashboard: the session cookie, the admin key behind it, CSRF on every form.

Forms are checked against the session's own CSRF token (the synchronizer-token pattern); the
sign-in form, which comes before any session, uses a double-submit cookie instead. A request's
body is read only after its session is known, so an anonymous client cannot make the server
spool an upload.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.responses import Response

from loraplex.adapters.models import ROLE_ADMIN, ApiKey
from loraplex.platform.dashboard.dashboard_state import (
    Admin,
    DashboardDep,
    PageError,
    SignInRequired,
)
from loraplex.platform.deps import StateDep
from loraplex.platform.state import AppState

PREFIX = "/dashboard"
SESSION_COOKIE = "lpx_dashboard"
SIGN_IN_COOKIE = "lpx_dashboard_sign_in"
CSRF_FIELD = "csrf_token"
CSRF_MESSAGE = (
    "This form has expired or did not come from this dashboard. Reload the page and try again."
)
MAX_FORM_FIELDS = 50


def key_is_active_admin(state: AppState, key_id: int) -> bool:
    with state.sessions() as session:
        key = session.get(ApiKey, key_id)
        return key is not None and key.role == ROLE_ADMIN and key.revoked_at is None


async def require_admin(request: Request, state: StateDep, dashboard: DashboardDep) -> Admin:
    """The signed-in admin, or SignInRequired: no cookie, an unknown or idle session, or an
    admin key revoked since signing in."""
    token = request.cookies.get(SESSION_COOKIE)
    session = dashboard.sessions.get(token)
    if session is None:
        raise SignInRequired()
    if not await run_in_threadpool(key_is_active_admin, state, session.key_id):
        dashboard.sessions.close(token)
        raise SignInRequired()
    assert token is not None
    return Admin(token, session)


AdminDep = Annotated[Admin, Depends(require_admin)]


def tokens_match(sent: object, expected: str) -> bool:
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), expected.encode())


async def read_form(request: Request, admin: Admin, *, max_files: int = 0) -> FormData:
    """The submitted form, once its CSRF token is the session's (else a 403 page)."""
    try:
        form = await request.form(max_files=max_files, max_fields=MAX_FORM_FIELDS)
    except HTTPException as exc:  # too many files or fields, or a malformed body
        raise PageError(exc.status_code, f"the form could not be read: {exc.detail}") from None
    if not tokens_match(form.get(CSRF_FIELD), admin.session.csrf_token):
        raise PageError(403, CSRF_MESSAGE)
    return form


def new_sign_in_token() -> str:
    return secrets.token_urlsafe(32)


def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    _set_cookie(request, response, SESSION_COOKIE, token)


def set_sign_in_cookie(request: Request, response: Response, token: str) -> None:
    _set_cookie(request, response, SIGN_IN_COOKIE, token)


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=PREFIX, httponly=True, samesite="strict")


def safe_next(target: object) -> str:
    """`target` if it is a path inside the dashboard, else the overview (no open redirects)."""
    if not isinstance(target, str) or len(target) > 2000 or "\\" in target:
        return PREFIX
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith(PREFIX):
        return PREFIX
    if parts.path not in (PREFIX,) and not parts.path.startswith(PREFIX + "/"):
        return PREFIX
    return target
