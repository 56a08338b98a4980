"""The tenants page: every tenant a page at a time, searchable by name, with its adapters count
and last day's usage; creating a tenant; disabling or enabling one."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loraplex.adapters.errors import ConflictError
from loraplex.adapters.listing import ResultPage, count_adapters_by_tenant
from loraplex.adapters.registry import validate_name
from loraplex.adapters.tenants import create_tenant
from loraplex.adapters.usage import UsageTotals, usage_totals_by_tenant
from loraplex.platform.admin_service import tenants_page, update_tenant
from loraplex.platform.dashboard.auth import PREFIX, AdminDep, read_form, safe_next
from loraplex.platform.dashboard.dashboard_state import Admin, DashboardDep, DashboardState
from loraplex.platform.dashboard.forms import QUOTA_LABELS, FormResult, form_text, parse_form
from loraplex.platform.dashboard.pagination import Pager, page_number
from loraplex.platform.dashboard.tenant_page import tenant_id_of
from loraplex.platform.deps import StateDep
from loraplex.platform.errors import as_api_error
from loraplex.platform.schemas import TenantCreate, TenantOut, TenantUpdate
from loraplex.platform.state import AppState

router = APIRouter(prefix=PREFIX, include_in_schema=False)
USAGE_SPAN = timedelta(hours=24)


@dataclass(frozen=True)
class TenantListing:
    found: ResultPage[TenantOut]
    adapters: dict[int, int]  # tenant id -> active adapters
    usage: dict[int, UsageTotals]  # tenant id -> the last day's usage
    search_error: str | None = None


@dataclass(frozen=True)
class CreateForm:
    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _load(state: AppState, search: str, pager_offset: int, size: int) -> TenantListing:
    with state.sessions() as session:
        try:
            found = tenants_page(session=session, search=search, limit=size, offset=pager_offset)
        except ValueError as exc:
            return TenantListing(ResultPage([], 0, size, 0), {}, {}, str(exc))
        ids = [tenant.id for tenant in found.items]
        now = datetime.now(UTC)
        return TenantListing(
            found,
            count_adapters_by_tenant(session=session, tenant_ids=ids),
            usage_totals_by_tenant(
                session=session, start=now - USAGE_SPAN, end=now, tenant_ids=ids
            ),
        )


async def _listing_page(
    request: Request,
    state: AppState,
    dashboard: DashboardState,
    admin: Admin,
    *,
    search: str,
    page: int,
    create: CreateForm,
    status_code: int = 200,
) -> Response:
    path = request.app.url_path_for("dashboard_tenants")
    pager = Pager(path, page, 0, search)
    listing = await run_in_threadpool(_load, state, search, pager.offset, pager.size)
    return dashboard.page(
        request,
        "tenants.html",
        admin=admin,
        listing=listing,
        pager=Pager(path, page, listing.found.total, search),
        create=create,
        quota_labels=QUOTA_LABELS,
        status_code=status_code,
    )


@router.get("/tenants", name="dashboard_tenants")
async def tenants(
    request: Request,
    admin: AdminDep,
    state: StateDep,
    dashboard: DashboardDep,
    q: Annotated[str, Query(max_length=200)] = "",
    page: Annotated[str | None, Query()] = None,
) -> Response:
    return await _listing_page(
        request,
        state,
        dashboard,
        admin,
        search=q.strip(),
        page=page_number(page),
        create=CreateForm(),
    )


def _create(state: AppState, result: FormResult) -> TenantOut:
    assert isinstance(result.model, TenantCreate)
    with state.sessions() as session:
        return TenantOut.from_row(create_tenant(session=session, **result.model.model_dump()))


@router.post("/tenants", name="dashboard_tenant_create")
async def create(
    request: Request, admin: AdminDep, state: StateDep, dashboard: DashboardDep
) -> Response:
    form = await read_form(request, admin)
    result = parse_form(form, TenantCreate, text_fields=("name",))
    errors = dict(result.errors)
    status_code = 400
    try:
        validate_name(result.values["name"], kind="tenant")
    except ValueError as exc:
        errors["name"] = str(exc)  # the registry's wording, clearer than the pattern
    if not errors:
        try:
            tenant = await run_in_threadpool(_create, state, result)
        except ConflictError as exc:
            errors["name"], status_code = str(exc), 409
        else:
            admin.session.flash("success", f"Tenant {tenant.name} created.")
            target = request.app.url_path_for("dashboard_tenant", tenant_id=str(tenant.id))
            return RedirectResponse(target, status_code=303)
    return await _listing_page(
        request,
        state,
        dashboard,
        admin,
        search="",
        page=1,
        create=CreateForm(result.values, errors),
        status_code=status_code,
    )


def _set_disabled(state: AppState, tenant_id: int, disabled: bool) -> TenantOut:
    with state.sessions() as session:
        update = TenantUpdate(disabled=disabled)
        return TenantOut.from_row(
            update_tenant(session=session, tenant_id=tenant_id, update=update)
        )


@router.post("/tenants/{tenant_id}/status", name="dashboard_tenant_status")
async def set_status(
    tenant_id: str, request: Request, admin: AdminDep, state: StateDep
) -> Response:
    number = tenant_id_of(tenant_id)
    form = await read_form(request, admin)
    disabled = form_text(form, "disabled") == "true"
    try:
        tenant = await run_in_threadpool(_set_disabled, state, number, disabled)
    except (LookupError, ValueError) as exc:
        error = as_api_error(exc)
        assert error is not None
        admin.session.flash("error", error.message)
    else:
        word = "disabled: its keys stop working" if tenant.disabled else "enabled"
        admin.session.flash("success", f"Tenant {tenant.name} {word}.")
    return RedirectResponse(safe_next(form.get("next")), status_code=303)
