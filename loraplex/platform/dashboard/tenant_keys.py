"""A tenant's API keys from its page: create one (its plaintext shown once, on the next page
only) and revoke one."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loraplex.adapters.api_keys import create_api_key, revoke_api_key
from loraplex.adapters.errors import NotFoundError
from loraplex.platform.dashboard.auth import PREFIX, AdminDep, read_form
from loraplex.platform.dashboard.dashboard_state import DashboardDep, PageError
from loraplex.platform.dashboard.forms import form_text
from loraplex.platform.dashboard.tenant_page import FormErrors, tenant_id_of, tenant_page
from loraplex.platform.deps import StateDep
from loraplex.platform.schemas import INT32_MAX, KeyCreate, KeyOut, NewKeyOut

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.post("/tenants/{tenant_id}/keys", name="dashboard_key_create")
async def create_key(
    tenant_id: str, request: Request, admin: AdminDep, state: StateDep, dashboard: DashboardDep
) -> Response:
    number = tenant_id_of(tenant_id)
    form = await read_form(request, admin)
    name = form_text(form, "name", max_length=1000)
    try:
        body = KeyCreate(name=name)
    except ValidationError:
        errors = FormErrors(key="A key's name must be at most 128 characters.", key_name=name)
        return await tenant_page(
            request, state, dashboard, admin, number, errors=errors, status_code=400
        )

    def create() -> NewKeyOut:
        with state.sessions() as session:
            created = create_api_key(session=session, tenant_id=number, name=body.name)
            return NewKeyOut(key=created.plaintext, **KeyOut.from_row(created.record).model_dump())

    try:
        key = await run_in_threadpool(create)
    except NotFoundError as exc:
        raise PageError(404, str(exc)) from None
    label = f"“{key.name}”" if key.name else key.prefix + "…"
    admin.session.flash(
        "secret", f"New key {label}: copy it now, it will not be shown again.", key.key
    )
    target = request.app.url_path_for("dashboard_tenant", tenant_id=tenant_id)
    return RedirectResponse(target, status_code=303)


@router.post("/tenants/{tenant_id}/keys/{key_id}/revoke", name="dashboard_key_revoke")
async def revoke_key(
    tenant_id: str, key_id: str, request: Request, admin: AdminDep, state: StateDep
) -> Response:
    number = tenant_id_of(tenant_id)
    if not key_id.isascii() or not key_id.isdigit() or not 1 <= int(key_id) <= INT32_MAX:
        raise PageError(404, f"API key {key_id!r} not found")
    await read_form(request, admin)

    def revoke() -> KeyOut:
        with state.sessions() as session:
            return KeyOut.from_row(
                revoke_api_key(session=session, key_id=int(key_id), tenant_id=number)
            )

    try:
        key = await run_in_threadpool(revoke)
    except NotFoundError as exc:
        raise PageError(404, str(exc)) from None
    admin.session.flash("success", f"Key {key.prefix}… revoked: it no longer authenticates.")
    target = request.app.url_path_for("dashboard_tenant", tenant_id=tenant_id)
    return RedirectResponse(target, status_code=303)
