"""Signing in to the dashboard with an admin key, and signing out.

The key is checked exactly as the admin API checks a bearer key (`verify_api_key`: hashed,
compared in constant time) and must be an admin's. It is never stored: the session remembers
the key's id, so revoking the key ends every session opened with it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loraplex.adapters.api_keys import verify_api_key
from loraplex.adapters.models import ROLE_ADMIN
from loraplex.platform.dashboard.auth import (
    CSRF_FIELD,
    CSRF_MESSAGE,
    PREFIX,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    AdminDep,
    clear_cookie,
    new_sign_in_token,
    read_form,
    safe_next,
    set_session_cookie,
    set_sign_in_cookie,
    tokens_match,
)
from loraplex.platform.dashboard.dashboard_state import DashboardDep, PageError
from loraplex.platform.dashboard.forms import form_text
from loraplex.platform.deps import StateDep
from loraplex.platform.state import AppState

router = APIRouter(prefix=PREFIX, include_in_schema=False)
MAX_KEY_LENGTH = 300
WRONG_KEY = "That is not an active admin key. Check it and try again."


def _admin_key_identity(state: AppState, presented: str) -> tuple[int, str] | None:
    """(key id, display label) of an active admin key, else None."""
    with state.sessions() as session:
        key = verify_api_key(session=session, presented=presented)
        if key is None or key.role != ROLE_ADMIN:
            return None
        label = f"{key.prefix}…" + (f" ({key.name})" if key.name else "")
        return key.id, label


def _sign_in_page(
    request: Request,
    dashboard: DashboardDep,
    *,
    next_path: str,
    error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    token = new_sign_in_token()
    response = dashboard.page(
        request,
        "sign_in.html",
        admin=None,
        sign_in_token=token,
        next_path=next_path,
        error=error,
        notice=notice,
        status_code=status_code,
    )
    set_sign_in_cookie(request, response, token)
    return response


@router.get("/sign-in", name="dashboard_sign_in")
async def sign_in_form(
    request: Request,
    dashboard: DashboardDep,
    next_path: Annotated[str, Query(alias="next", max_length=2000)] = PREFIX,
    signed_out: bool = False,
) -> Response:
    if dashboard.sessions.get(request.cookies.get(SESSION_COOKIE)) is not None:
        return RedirectResponse(safe_next(next_path), status_code=303)
    notice = "You are signed out." if signed_out else None
    return _sign_in_page(request, dashboard, next_path=safe_next(next_path), notice=notice)


@router.post("/sign-in", name="dashboard_sign_in_submit")
async def sign_in(request: Request, state: StateDep, dashboard: DashboardDep) -> Response:
    form = await request.form(max_files=0, max_fields=10)
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not expected or not tokens_match(form.get(CSRF_FIELD), expected):
        raise PageError(403, CSRF_MESSAGE)
    next_path = safe_next(form.get("next"))
    presented = form_text(form, "key", max_length=MAX_KEY_LENGTH)
    identity = await run_in_threadpool(_admin_key_identity, state, presented) if presented else None
    if identity is None:
        return _sign_in_page(
            request, dashboard, next_path=next_path, error=WRONG_KEY, status_code=401
        )
    key_id, label = identity
    token, _ = dashboard.sessions.open(key_id=key_id, key_label=label)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(request, response, token)
    clear_cookie(response, SIGN_IN_COOKIE)
    return response


@router.post("/sign-out", name="dashboard_sign_out")
async def sign_out(request: Request, admin: AdminDep, dashboard: DashboardDep) -> Response:
    await read_form(request, admin)
    dashboard.sessions.close(admin.token)
    target = request.app.url_path_for("dashboard_sign_in") + "?signed_out=1"
    response = RedirectResponse(target, status_code=303)
    clear_cookie(response, SESSION_COOKIE)
    return response
