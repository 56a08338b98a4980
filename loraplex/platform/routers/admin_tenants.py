"""Admin: tenants (create, list and search, get, change quotas, disable or enable)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from loraplex.adapters.listing import MAX_OFFSET, MAX_PAGE_SIZE
from loraplex.adapters.tenants import create_tenant, get_tenant
from loraplex.platform.admin_service import tenants_page, update_tenant
from loraplex.platform.deps import SessionDep, require_admin
from loraplex.platform.schemas import (
    DatabaseId,
    ListOf,
    SearchText,
    TenantCreate,
    TenantOut,
    TenantUpdate,
)

router = APIRouter(
    prefix="/admin/v1/tenants", tags=["Admin"], dependencies=[Depends(require_admin)]
)
TenantId = Annotated[DatabaseId, Path(description="the tenant's id")]


@router.post("", status_code=201, response_model=TenantOut, summary="Create a tenant")
def create(body: TenantCreate, session: SessionDep) -> TenantOut:
    tenant = create_tenant(session=session, **body.model_dump())
    return TenantOut.from_row(tenant)


@router.get("", response_model=ListOf[TenantOut], summary="List tenants, by id")
def list_all(
    session: SessionDep,
    search: Annotated[SearchText, Query(description="only names containing this")] = "",
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE_SIZE, description="default: all")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ListOf[TenantOut]:
    page = tenants_page(session=session, search=search, limit=limit, offset=offset)
    return ListOf[TenantOut](data=page.items)


@router.get("/{tenant_id}", response_model=TenantOut, summary="Get a tenant")
def get(tenant_id: TenantId, session: SessionDep) -> TenantOut:
    return TenantOut.from_row(get_tenant(session=session, tenant_id=tenant_id))


@router.patch(
    "/{tenant_id}",
    response_model=TenantOut,
    summary="Change quotas, or disable / enable a tenant",
    description="Fields left out are unchanged; a quota sent as null removes the limit. A "
    "disabled tenant's keys stop authenticating until it is enabled again.",
)
def update(tenant_id: TenantId, body: TenantUpdate, session: SessionDep) -> TenantOut:
    return TenantOut.from_row(update_tenant(session=session, tenant_id=tenant_id, update=body))
